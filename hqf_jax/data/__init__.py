"""Byte data: sources (files, stdlib, HF-format local data, music, digits, zip-space), the byte
store they are built into, and the deterministic window sampler.

Imports: numpy, tqdm, ``hqf_jax.errors`` and ``hqf_jax.ops.constants`` only (``datasets``, music21
and scikit-learn lazily, inside the sources that need them). ``registry`` imports no source; the
sources register into it; ``catalog`` imports every source (the one list) and is what callers use:
``from hqf_jax.data.catalog import load_corpus``.
"""
