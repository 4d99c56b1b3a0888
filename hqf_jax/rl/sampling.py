"""Pure functions on next-token logits for rollouts: the sampling distribution (temperature, then the
shared top-k / top-p filter of hqf_jax.ops.sampling) and the per-step statistics a rollout records
(log-probability, entropy, varentropy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hqf_jax.ops.sampling import filter_logits

NEG_INF = -1e30


def process_logits(logits: jax.Array, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0) -> jax.Array:
    """Logits of the sampling distribution: divide by temperature, then keep the top_k largest
    (0: all) and the smallest set whose probability reaches top_p (1.0: all), through
    hqf_jax.ops.sampling.filter_logits (dropped entries get the dtype's lowest value).

    logits: (..., V). temperature > 0; top_k and top_p are static Python numbers.
    """
    return filter_logits(logits.astype(jnp.float32) / jnp.float32(temperature), top_k, top_p)


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
