"""Pure functions on next-token logits: truncation (temperature, top-k, top-p), sampling, and the
per-step statistics a rollout records (log-probability, entropy, varentropy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def process_logits(logits: jax.Array, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0) -> jax.Array:
    """Logits of the sampling distribution: divide by temperature, keep the top_k largest (0: all),
    then the smallest set whose probability reaches top_p (1.0: all). Dropped entries get -1e30.

    logits: (..., V) float32. temperature > 0; top_k and top_p are static Python numbers.
    """
    x = logits.astype(jnp.float32) / jnp.float32(temperature)
    if top_k and top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, top_k)[0][..., -1:]
        x = jnp.where(x < kth, NEG_INF, x)
    if top_p < 1.0:
        srt = jnp.sort(x, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(srt, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted entry
        keep = before < top_p  # the first entry is always kept
        cutoff = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x < cutoff, NEG_INF, x)
    return x


def token_stats(logits: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log p(token), entropy H, varentropy Var[-log p]) of softmax(logits), in nats.

    logits: (..., V); tokens: (...) int. Varentropy = sum_v p_v (log p_v + H)^2, the variance of the
    surprisal under the distribution itself (0 for a one-hot or a uniform distribution).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    p = jnp.exp(logp)
    plogp = jnp.where(p > 0, p * logp, 0.0)
    ent = -plogp.sum(axis=-1)
    dev = jnp.where(p > 0, p * (logp + ent[..., None]) ** 2, 0.0)
    var = dev.sum(axis=-1)
    lp_tok = jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lp_tok, ent, var


def entropy_varentropy(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(entropy, varentropy) of softmax(logits) over the last axis, in nats."""
    _, ent, var = token_stats(logits, jnp.zeros(logits.shape[:-1], jnp.int32))
    return ent, var
