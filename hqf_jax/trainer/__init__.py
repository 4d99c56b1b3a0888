"""The one shared training loop (``loop.train``) and the tasks that describe each track to it: state, jitted
step, orbax checkpoints, metrics and logging, sharding over a Mesh, chamber interventions.

Imports ``nn``, ``data``, ``ops`` and ``hqf_jax.cli``; imported by ``rl``, ``quant``, ``scoring`` and entry points.
"""
