"""Pallas GPU kernels, each beside its pure-jnp reference in ``hqf_jax/ops`` and tested against it in
interpret mode on the CPU: retention (forward, backward), the Clifford geometric product, quantized matmul.

Imports ``hqf_jax.ops`` (references, codecs) and ``hqf_jax.errors``; imported by ``nn`` and ``quant``.
A kernel never replaces its reference: both stay selectable.
"""
