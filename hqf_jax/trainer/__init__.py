"""The one shared training loop (``loop.train``) and the tasks that describe each track to it: state, jitted
step, orbax checkpoints, metrics and logging (MFU against spec and measured peaks: ``mfu``), sharding over a
Mesh, chamber interventions, and the train-step timer the benchmarks share (``timing``).

Imports ``nn``, ``data``, ``ops`` and ``hqf_jax.cli``; imported by ``rl``, ``quant``, ``scoring`` and entry points.
"""
