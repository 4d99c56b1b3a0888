"""On-device integer hashing (uint32, murmur3 finaliser) for contexts and basin keys."""

from __future__ import annotations

import jax.numpy as jnp

_GOLDEN = 0x9E3779B9


def fmix32(h: jnp.ndarray) -> jnp.ndarray:
    """murmur3 32-bit finaliser: a bijection on uint32 with full avalanche."""
    h = h.astype(jnp.uint32)
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hash_rows(x: jnp.ndarray, seed: int = 0) -> jnp.ndarray:
    """uint32 hash of each row of an integer array (..., L); order-sensitive, deterministic."""
    x = x.astype(jnp.int32).astype(jnp.uint32)
    h = jnp.full(x.shape[:-1], fmix32(jnp.uint32((seed * _GOLDEN + 0x1234567) & 0xFFFFFFFF)), jnp.uint32)
    for i in range(x.shape[-1]):
        h = fmix32(h ^ (x[..., i] + jnp.uint32((_GOLDEN * (i + 1)) & 0xFFFFFFFF) + (h << 6) + (h >> 2)))
    return h
