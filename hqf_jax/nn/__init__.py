"""Flax NNX modules built from ``hqf_jax.ops``: the RetNet byte LM, RetNPhi (a converted HF decoder), the HF
decoder family for weight import, LoRA/DoRA adapters, recurrent generation.

Imports ``hqf_jax.ops`` and ``pallas_kernels`` (a kernel is one selectable form of an op); never the trainer,
data or entry points.
"""
