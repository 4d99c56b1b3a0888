"""Semantic prototypes: the K most frequent targets of each bucket, built by sorting on device."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def _first_of_runs(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.concatenate([jnp.ones((1,), bool), x[1:] != x[:-1]])


@partial(jax.jit, static_argnames=("n_buckets", "vocab_size", "k"))
def top_k_per_bucket(buckets, targets, valid, n_buckets: int, vocab_size: int, k: int, weights=None):
    """Count (bucket, target) pairs (each weighted by ``weights``, default 1) and keep each
    bucket's k most frequent targets.

    Returns ``(proto_targets, proto_counts)`` of shape (n_buckets, k): targets sorted by count
    (descending, ties by smaller id), -1 / 0 where a bucket has fewer than k distinct targets.
    Work is two sorts of the n input items; nothing of size n_buckets * vocab_size is built.
    """
    if n_buckets * vocab_size >= 2**31 - 1:
        raise ValueError(
            f"n_buckets * vocab_size = {n_buckets * vocab_size} overflows int32; lower proto_depth"
        )
    n = buckets.shape[0]
    big = jnp.int32(2**31 - 1)
    combo = jnp.where(valid, buckets.astype(jnp.int32) * vocab_size + targets.astype(jnp.int32), big)
    order0 = jnp.argsort(combo)
    s = combo[order0]
    start = _first_of_runs(s)
    run = jnp.cumsum(start.astype(jnp.int32)) - 1
    w = jnp.ones((n,), jnp.int32) if weights is None else weights.astype(jnp.int32)
    counts = jax.ops.segment_sum(w[order0], run, num_segments=n)
    uniq = jnp.full((n,), big, jnp.int32).at[run].set(s)
    ok = uniq != big
    p = jnp.where(ok, uniq // vocab_size, n_buckets)
    t = jnp.where(ok, uniq % vocab_size, 0)
    order = jnp.lexsort((t, -counts, p))
    p2, t2, c2, ok2 = p[order], t[order], counts[order], ok[order]
    pos = jnp.arange(n, dtype=jnp.int32)
    first = _first_of_runs(p2)
    rank = pos - jax.lax.cummax(jnp.where(first, pos, 0))
    keep = ok2 & (rank < k)
    rows = jnp.where(keep, p2, n_buckets)
    cols = jnp.where(keep, rank, 0)
    proto_t = jnp.full((n_buckets, k), -1, jnp.int32).at[rows, cols].set(t2, mode="drop")
    proto_c = jnp.zeros((n_buckets, k), jnp.int32).at[rows, cols].set(c2, mode="drop")
    return proto_t, proto_c
