"""Classic vector-symbolic baselines with bucketed traces, for capacity comparisons.

* HRR (Plate 1995): token vectors ~ N(0, 1/d); a context key is the circular convolution of
  the unitary projections of its token vectors (|FFT| = 1; with raw Gaussian vectors a chain of
  4 convolutions recalled 0 of 1 stored pair in our check, the |K|^2 spectrum distorts too
  much), token l rolled by l positions (order matters); the memory of a bucket is
  the sum of key (*) value; retrieval correlates with the key (the involution, the usual
  approximate inverse) and scores the result against every value vector.
* FHRR (Plate 2003): token vectors are d/2 unit phasors; binding adds phases, a context key's
  phase is the sum of its tokens' phases, token l rolled by l; retrieval multiplies by the
  conjugate key (an exact inverse); scores are Re <r, value>. d/2 complex = d stored floats.

Both route a context to one of ``n_buckets`` traces by a hash of its token ids, so a
comparison at equal storage is: n_buckets * d floats here vs 16 floats per tower bucket.
``buckets`` (B,) overrides the hash routing; ``valid`` (B,) bool masks padding rows out of a store
(fixed batch shapes under jit). All functions are pure and jit-friendly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hqf_jax.holo.hashing import hash_rows


def _bucket(contexts: jnp.ndarray, n_buckets: int) -> jnp.ndarray:
    return (hash_rows(contexts, seed=12345) % jnp.uint32(n_buckets)).astype(jnp.int32)


def _route(contexts, n_buckets, buckets):
    """Explicit bucket ids when given (experiments on one superposition), else the hash."""
    return _bucket(contexts, n_buckets) if buckets is None else buckets


# ---------------------------------------------------------------- HRR
def hrr_codebook(key: jax.Array, vocab: int, dim: int) -> jnp.ndarray:
    return jax.random.normal(key, (vocab, dim), jnp.float32) / jnp.sqrt(dim)


def _hrr_key_spectrum(codebook: jnp.ndarray, contexts: jnp.ndarray) -> jnp.ndarray:
    dim = codebook.shape[1]
    spec = jnp.fft.rfft(codebook[contexts], axis=-1)  # (B, L, dim//2+1)
    spec = spec / jnp.maximum(jnp.abs(spec), 1e-12)  # unitary projection of the key tokens
    freqs = jnp.arange(spec.shape[-1])
    shifts = jnp.arange(contexts.shape[1])
    roll = jnp.exp(-2j * jnp.pi * shifts[:, None] * freqs[None, :] / dim)  # roll by l in time domain
    return jnp.prod(spec * roll[None], axis=1)


def hrr_init(n_buckets: int, dim: int) -> jnp.ndarray:
    return jnp.zeros((n_buckets, dim), jnp.float32)


def _mask(bound, valid):
    return bound if valid is None else bound * valid.astype(bound.dtype).reshape((-1,) + (1,) * (bound.ndim - 1))


def hrr_store(traces, codebook, contexts, targets, buckets=None, valid=None):
    dim = codebook.shape[1]
    k = _hrr_key_spectrum(codebook, contexts)
    v = jnp.fft.rfft(codebook[targets], axis=-1)
    bound = _mask(jnp.fft.irfft(k * v, n=dim, axis=-1), valid)
    return traces.at[_route(contexts, traces.shape[0], buckets)].add(bound)


def hrr_scores(traces, codebook, contexts, buckets=None):
    dim = codebook.shape[1]
    k = _hrr_key_spectrum(codebook, contexts)
    m = jnp.fft.rfft(traces[_route(contexts, traces.shape[0], buckets)], axis=-1)
    r = jnp.fft.irfft(m * jnp.conj(k), n=dim, axis=-1)  # correlation = convolution with the involution
    return r @ codebook.T


# ---------------------------------------------------------------- FHRR
def fhrr_codebook(key: jax.Array, vocab: int, dim: int) -> jnp.ndarray:
    """Phases (vocab, dim // 2): dim stored floats per complex vector."""
    return jax.random.uniform(key, (vocab, dim // 2), jnp.float32, 0.0, 2 * jnp.pi)


def _fhrr_key_phase(phases, contexts):
    p = phases[contexts]  # (B, L, D)
    rolled = jnp.stack([jnp.roll(p[:, l], l, axis=-1) for l in range(contexts.shape[1])], axis=1)
    return jnp.sum(rolled, axis=1)


def fhrr_init(n_buckets: int, dim: int) -> jnp.ndarray:
    """Traces stored as (n_buckets, 2, dim // 2) real/imaginary parts: dim floats per bucket."""
    return jnp.zeros((n_buckets, 2, dim // 2), jnp.float32)


def fhrr_store(traces, phases, contexts, targets, buckets=None, valid=None):
    ph = _fhrr_key_phase(phases, contexts) + phases[targets]
    bound = _mask(jnp.stack([jnp.cos(ph), jnp.sin(ph)], axis=1), valid)
    return traces.at[_route(contexts, traces.shape[0], buckets)].add(bound)


def fhrr_scores(traces, phases, contexts, buckets=None):
    k = _fhrr_key_phase(phases, contexts)
    t = traces[_route(contexts, traces.shape[0], buckets)]
    re, im = t[:, 0], t[:, 1]
    c, s = jnp.cos(k), jnp.sin(k)
    rr, ri = re * c + im * s, im * c - re * s  # (re + i im) * exp(-i k)
    return rr @ jnp.cos(phases).T + ri @ jnp.sin(phases).T
