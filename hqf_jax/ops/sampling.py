"""Next-token sampling from logits: temperature, top-k and top-p (nucleus), pure functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Set to -inf every logit outside the top-k and outside the smallest set whose mass >= top_p.

    logits (..., V). top_k = 0 and top_p = 1 leave the logits unchanged.
    """
    neg = jnp.finfo(logits.dtype).min
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # mass strictly before each sorted position; keep positions whose preceding mass < top_p
        before = jnp.cumsum(probs, axis=-1) - probs
        keep = before < top_p
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, neg, logits)
    return logits


def sample_token(key: jax.Array, logits: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 vocab_limit: int | None = None) -> jax.Array:
    """Sample ids (...,) from logits (..., V); temperature 0 is greedy. ``vocab_limit`` masks ids >= it
    (a byte model generating bytes masks BOS/PAD)."""
    logits = logits.astype(jnp.float32)
    if vocab_limit is not None:
        logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1)
    logits = filter_logits(logits / temperature, top_k, top_p)
    return jax.random.categorical(key, logits, axis=-1)


def filter_logits_rows(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """``filter_logits`` with a setting per row: logits (B, V), top_k (B,) int (0 = off), top_p (B,) float
    (>= 1 = off). Rows whose settings are off are returned unchanged, bit for bit."""
    neg = jnp.finfo(logits.dtype).min
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    v = logits.shape[-1]
    top_k = jnp.asarray(top_k, jnp.int32)
    kth = jnp.take_along_axis(sorted_logits, jnp.clip(top_k - 1, 0, v - 1)[:, None], axis=-1)
    use_k = ((top_k > 0) & (top_k < v))[:, None]
    logits = jnp.where(use_k & (logits < kth), neg, logits)
    sorted_logits = jnp.where(use_k & (sorted_logits < kth), neg, sorted_logits)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    top_p = jnp.asarray(top_p, jnp.float32)[:, None]
    threshold = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where((top_p < 1.0) & (logits < threshold), neg, logits)


def sample_rows(keys: jax.Array, logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
                vocab_limit: int | None = None) -> jax.Array:
    """One id per row with the row's own key (B, 2) and settings (B,): temperature 0 is greedy. A row gets the
    same id as ``sample_token(keys[b], logits[b], ...)`` with its settings as scalars (top-k and top-p ties aside),
    so a sequence's output does not depend on the rows it is batched with."""
    logits = logits.astype(jnp.float32)
    if vocab_limit is not None:
        logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
    temperature = jnp.asarray(temperature, jnp.float32)
    greedy = jnp.argmax(logits, axis=-1)
    hot = temperature > 0
    scaled = logits / jnp.where(hot, temperature, 1.0)[:, None]
    filtered = filter_logits_rows(scaled, top_k, top_p)
    sampled = jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys, filtered)
    return jnp.where(hot, sampled, greedy).astype(jnp.int32)
