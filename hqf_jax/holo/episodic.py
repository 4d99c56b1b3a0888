"""Episodic cache: exact context -> target recall in an on-device open-addressing hash table.

The table is three arrays (no Python dict anywhere): ``keys`` (capacity, L) int32 holding the
full context (row of EMPTY = -1 when free), ``values`` (capacity,) int32 and two counters.
Slots are found by linear probing from ``hash_rows(context) & (capacity - 1)``; a lookup
compares the whole stored context, so a hit is exact (hash collisions only cost probes).

Batched insertion is jitted: rounds of a ``lax.while_loop`` in which every pending item looks
at its current probe slot; items whose context is already there are resolved, items that find
an empty slot compete for it (the lowest batch index wins, found with a sort, O(B log B) per
round, never a capacity-sized scratch array) and the losers look again at the same slot (it
may now hold their own context). Values follow "last write wins" in stream order: the final
value of a slot is the target of the highest batch index that resolved to it. Items that
exhaust ``max_probes`` are counted in ``dropped`` (the table is too full: grow it).
Contexts must use non-negative token ids.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from hqf_jax.errors import HqfError
from hqf_jax.holo.hashing import hash_rows

EMPTY = -1


class CacheConfigError(HqfError, ValueError):
    """Raised for an invalid cache size."""


class EpisodicCache(NamedTuple):
    keys: jnp.ndarray  # (capacity, L) int32
    values: jnp.ndarray  # (capacity,) int32
    size: jnp.ndarray  # () int32, occupied slots
    dropped: jnp.ndarray  # () int32, inserts that found no slot within max_probes


def episodic_init(capacity: int, context_len: int) -> EpisodicCache:
    if capacity < 1 or capacity & (capacity - 1):
        raise CacheConfigError(f"episodic capacity must be a power of two, got {capacity}; use e.g. {1 << max(capacity, 1).bit_length()}")
    return EpisodicCache(
        keys=jnp.full((capacity, context_len), EMPTY, jnp.int32),
        values=jnp.full((capacity,), EMPTY, jnp.int32),
        size=jnp.zeros((), jnp.int32),
        dropped=jnp.zeros((), jnp.int32),
    )


def _first_of_runs(sorted_vals: jnp.ndarray) -> jnp.ndarray:
    prev = jnp.concatenate([jnp.full((1,), -1, sorted_vals.dtype), sorted_vals[:-1]])
    return sorted_vals != prev


@partial(jax.jit, static_argnames=("max_probes",))
def episodic_insert(
    cache: EpisodicCache,
    contexts: jnp.ndarray,
    targets: jnp.ndarray,
    valid: jnp.ndarray | None = None,
    max_probes: int = 64,
) -> EpisodicCache:
    """Insert a batch of (context (B, L), target (B,)) pairs; ``valid`` (B,) masks items out."""
    cap, length = cache.keys.shape
    chex.assert_shape(contexts, (None, length))
    b = contexts.shape[0]
    chex.assert_shape(targets, (b,))
    contexts = contexts.astype(jnp.int32)
    valid = jnp.ones((b,), bool) if valid is None else valid.astype(bool)
    mask = jnp.uint32(cap - 1)
    home = hash_rows(contexts)
    idx = jnp.arange(b, dtype=jnp.int32)

    def cond(carry):
        _, _, pending, _, _ = carry
        return jnp.any(pending)

    def body(carry):
        keys, probe, pending, resolved, won = carry
        slot = ((home + probe.astype(jnp.uint32)) & mask).astype(jnp.int32)
        sk = keys[slot]
        empty = sk[:, 0] == EMPTY
        match = ~empty & jnp.all(sk == contexts, axis=1) & pending
        claim = pending & empty
        claim_slot = jnp.where(claim, slot, cap)
        order = jnp.argsort(claim_slot, stable=True)  # lowest batch index first within a slot
        first = _first_of_runs(claim_slot[order]) & claim[order]
        winner = jnp.zeros((b,), bool).at[order].set(first)
        keys = keys.at[jnp.where(winner, slot, cap)].set(contexts, mode="drop")
        done = match | winner
        resolved = jnp.where(done, slot, resolved)
        won = won | winner
        probe = probe + (pending & ~empty & ~match).astype(jnp.int32)
        pending = pending & ~done & (probe < max_probes)
        return keys, probe, pending, resolved, won

    init = (cache.keys, jnp.zeros((b,), jnp.int32), valid, jnp.full((b,), cap, jnp.int32), jnp.zeros((b,), bool))
    keys, _, _, resolved, won = jax.lax.while_loop(cond, body, init)
    # last write wins: per slot, the highest batch index that resolved to it writes its target
    order = jnp.lexsort((idx, resolved))
    rs = resolved[order]
    last = jnp.concatenate([rs[1:] != rs[:-1], jnp.ones((1,), bool)])
    values = cache.values.at[jnp.where(last, rs, cap)].set(targets.astype(jnp.int32)[order], mode="drop")
    n_dropped = jnp.sum(valid & (resolved == cap)).astype(jnp.int32)
    return EpisodicCache(keys, values, cache.size + jnp.sum(won).astype(jnp.int32), cache.dropped + n_dropped)


@partial(jax.jit, static_argnames=("max_probes",))
def episodic_lookup(cache: EpisodicCache, contexts: jnp.ndarray, max_probes: int = 64):
    """Exact lookup of contexts (B, L) -> (found (B,) bool, target (B,) int32, EMPTY when not found)."""
    cap, length = cache.keys.shape
    chex.assert_shape(contexts, (None, length))
    b = contexts.shape[0]
    contexts = contexts.astype(jnp.int32)
    mask = jnp.uint32(cap - 1)
    home = hash_rows(contexts)

    def cond(carry):
        _, active, _, _ = carry
        return jnp.any(active)

    def body(carry):
        probe, active, found, value = carry
        slot = ((home + probe.astype(jnp.uint32)) & mask).astype(jnp.int32)
        sk = cache.keys[slot]
        empty = sk[:, 0] == EMPTY
        match = active & ~empty & jnp.all(sk == contexts, axis=1)
        found = found | match
        value = jnp.where(match, cache.values[slot], value)
        probe = probe + 1
        active = active & ~match & ~empty & (probe < max_probes)
        return probe, active, found, value

    init = (jnp.zeros((b,), jnp.int32), jnp.ones((b,), bool), jnp.zeros((b,), bool), jnp.full((b,), EMPTY, jnp.int32))
    _, _, found, value = jax.lax.while_loop(cond, body, init)
    return found, value


def episodic_bytes(cache: EpisodicCache) -> int:
    """Storage of the table in bytes (keys + values)."""
    return int(cache.keys.size * 4 + cache.values.size * 4)
