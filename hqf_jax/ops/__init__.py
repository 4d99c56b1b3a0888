"""Pure maths on arrays: retention (parallel, chunkwise, recurrent), Cl(3,1) and SO(4) algebra, quant codecs,
RoPE, sampling, constants. No state, no classes with parameters, no I/O.

Imports nothing of ours but ``hqf_jax.errors``; every other package may import it. Each Pallas kernel in
``pallas_kernels/`` has its pure-jnp reference here.
"""
