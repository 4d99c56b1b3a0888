"""GRPO and its variants as pure functions on arrays.

Shapes: B sequences (= num_prompts * G, each prompt's G samples contiguous), T token positions.
Per-token arrays are (B, T) float32 and aligned to the token they score; ``mask`` (B, T) marks the
generated tokens that count (the completion o_i, |o_i| = mask[i].sum()).

Formulas (loss = -J, minimised):

* DeepSeekMath GRPO (Shao et al. 2024, arXiv:2402.03300, eq. 3 and sec. 4.1.2)::

      J = 1/G sum_i 1/|o_i| sum_t { min(r_it A_i, clip(r_it, 1-eps, 1+eps) A_i) - beta D_KL,it }
      A_i = (R_i - mean(R)) / std(R)                      (group-normalised outcome advantage)
      D_KL,it = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1  (k3 estimator, eq. 4; Schulman 2020)
      r_it = pi_theta(o_it | q, o_i<t) / pi_theta_old(o_it | q, o_i<t)

* Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783, eq. in sec. 3.1):
  drops the 1/|o_i| length normalisation and the std division:
  ``A_i = R_i - mean(R)``; ``J = 1/G sum_i sum_t {...} / MAX_LEN`` (a constant, the generation budget).

* DAPO (Yu et al. 2025, arXiv:2503.14476, eq. 8-10): clip-higher (eps_low, eps_high), a token-level
  loss ``J = 1/sum_i |o_i| sum_i sum_t {...}``, and dynamic sampling that keeps only groups whose
  rewards are not all equal (``0 < |{o_i correct}| < G``). DAPO drops the KL term (beta = 0).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import chex
import jax
import jax.numpy as jnp

Aggregation = Literal["seq_mean", "constant", "token_mean"]
VARIANTS = ("grpo", "dr_grpo", "dapo")


class GRPOConfigError(ValueError):
    """A GRPO configuration value that cannot work (the message names the fix)."""


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """Loss configuration. Build with :func:`grpo_config` to get a paper's defaults."""

    group_size: int = 8
    eps_low: float = 0.2  # lower clip: ratio >= 1 - eps_low
    eps_high: float = 0.2  # upper clip: ratio <= 1 + eps_high (DAPO clip-higher: 0.28)
    beta: float = 0.04  # weight of the k3 KL to the frozen reference
    std_normalize: bool = True  # divide advantages by the group std (GRPO, DAPO) or not (Dr. GRPO)
    std_ddof: int = 1  # 1: unbiased std as torch.std / TRL; 0: population std
    adv_eps: float = 1e-4  # added to the std before dividing
    aggregation: Aggregation = "seq_mean"
    max_len: int = 0  # the constant of Dr. GRPO's "constant" aggregation (generation budget)
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal

    def __post_init__(self):
        if self.group_size < 2:
            raise GRPOConfigError(f"group_size={self.group_size}: GRPO needs at least 2 samples per prompt")
        if self.aggregation not in ("seq_mean", "constant", "token_mean"):
            raise GRPOConfigError(
                f"aggregation={self.aggregation!r}: use one of 'seq_mean', 'constant', 'token_mean'")
        if self.aggregation == "constant" and self.max_len <= 0:
            raise GRPOConfigError("aggregation='constant' (Dr. GRPO) needs max_len > 0: set it to max_new_tokens")
        if self.eps_low < 0 or self.eps_high < 0 or self.eps_low >= 1:
            raise GRPOConfigError(f"clip range eps_low={self.eps_low}, eps_high={self.eps_high}: need 0 <= eps_low < 1, eps_high >= 0")


_PRESETS = {
    "grpo": dict(eps_low=0.2, eps_high=0.2, beta=0.04, std_normalize=True, aggregation="seq_mean",
                 dynamic_sampling=False),
    "dr_grpo": dict(eps_low=0.2, eps_high=0.2, beta=0.0, std_normalize=False, aggregation="constant",
                    dynamic_sampling=False),
    "dapo": dict(eps_low=0.2, eps_high=0.28, beta=0.0, std_normalize=True, aggregation="token_mean",
                 dynamic_sampling=True),
}


def grpo_config(variant: str = "grpo", **overrides) -> GRPOConfig:
    """The defaults of a variant ('grpo', 'dr_grpo', 'dapo'), then ``overrides`` on top."""
    if variant not in _PRESETS:
        raise GRPOConfigError(f"variant={variant!r}: use one of {', '.join(VARIANTS)}")
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise GRPOConfigError(f"unknown GRPO config keys {bad}; valid keys: {sorted(fields)}")
    return GRPOConfig(**{**_PRESETS[variant], **overrides})


def group_advantages(rewards: jax.Array, group_size: int, *, std_normalize: bool = True,
                     eps: float = 1e-4, ddof: int = 1) -> jax.Array:
    """Outcome advantage of each sample relative to its group: (R - mean) [/ (std + eps)].

    rewards: (B,) with B = num_groups * group_size, groups contiguous. Returns (B,) float32.
    """
    chex.assert_rank(rewards, 1)
    if rewards.shape[0] % group_size:
        raise GRPOConfigError(f"{rewards.shape[0]} rewards is not a multiple of group_size={group_size}")
    r = rewards.astype(jnp.float32).reshape(-1, group_size)
    centered = r - r.mean(axis=1, keepdims=True)
    if std_normalize:
        std = jnp.sqrt((centered ** 2).sum(axis=1, keepdims=True) / (group_size - ddof))
        centered = centered / (std + eps)
    return centered.reshape(-1)


def group_keep_mask(rewards: jax.Array, group_size: int, tol: float = 0.0) -> jax.Array:
    """DAPO dynamic sampling: True for the samples of groups whose rewards are not all equal.

    A group is dropped when max - min <= tol (all its advantages are zero: no gradient signal).
    Returns (B,) bool.
    """
    r = rewards.astype(jnp.float32).reshape(-1, group_size)
    keep = (r.max(axis=1) - r.min(axis=1)) > tol
    return jnp.repeat(keep, group_size)


def k3_kl(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """Per-token k3 estimator of KL(pi_theta || pi_ref): exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def clipped_surrogate(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array,
                      eps_low: float, eps_high: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """PPO/GRPO clipped objective per token: min(r A, clip(r, 1-eps_low, 1+eps_high) A).

    logp, old_logp: (B, T); advantages: (B,) (outcome advantage, the same for every token of o_i).
    Returns (objective (B,T), ratio (B,T), clipped (B,T) bool: the clipped term is the active one).
    """
    ratio = jnp.exp(logp - old_logp)
    a = advantages[:, None]
    unclipped = ratio * a
    clipped_ratio = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    clipped = clipped_ratio * a
    obj = jnp.minimum(unclipped, clipped)
    is_clipped = ((ratio < 1.0 - eps_low) & (a < 0)) | ((ratio > 1.0 + eps_high) & (a > 0))
    return obj, ratio, is_clipped


def aggregate(per_token: jax.Array, mask: jax.Array, aggregation: Aggregation, *,
              max_len: int = 0, seq_weights: jax.Array | None = None) -> jax.Array:
    """Reduce a (B, T) per-token quantity over the masked tokens to a scalar.

    seq_mean:   sum_i w_i (sum_t x_it / |o_i|) / sum_i w_i            (DeepSeekMath GRPO)
    constant:   sum_i w_i  sum_t x_it / (max_len * sum_i w_i)         (Dr. GRPO)
    token_mean: sum_i w_i  sum_t x_it / sum_i w_i |o_i|               (DAPO token-level)
    w_i = seq_weights (1 by default; 0 drops a sequence, e.g. DAPO's filtered groups).
    """
    m = mask.astype(jnp.float32)
    w = jnp.ones(per_token.shape[0], jnp.float32) if seq_weights is None else seq_weights.astype(jnp.float32)
    tok_sum = (per_token * m).sum(axis=1)
    lens = m.sum(axis=1)
    n_seq = jnp.maximum(w.sum(), 1e-8)
    if aggregation == "seq_mean":
        return (w * tok_sum / jnp.maximum(lens, 1.0)).sum() / n_seq
    if aggregation == "constant":
        return (w * tok_sum).sum() / (max_len * n_seq)
    if aggregation == "token_mean":
        return (w * tok_sum).sum() / jnp.maximum((w * lens).sum(), 1.0)
    raise GRPOConfigError(f"aggregation={aggregation!r}: use one of 'seq_mean', 'constant', 'token_mean'")


def grpo_loss(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array | None, mask: jax.Array,
              advantages: jax.Array, cfg: GRPOConfig,
              seq_weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO loss (to minimise) and its metrics.

    logp: (B, T) log pi_theta of the sampled tokens (differentiated); old_logp: (B, T) at sampling time;
    ref_logp: (B, T) under the frozen reference, or None when cfg.beta == 0; mask: (B, T) bool;
    advantages: (B,), e.g. from :func:`group_advantages`; seq_weights: (B,) or None.
    Per token: l_it = -min(r A, clip(r) A) + beta * k3(logp, ref_logp), aggregated per cfg.aggregation.
    """
    chex.assert_rank([logp, old_logp, mask], 2)
    chex.assert_equal_shape([logp, old_logp, mask])
    chex.assert_shape(advantages, (logp.shape[0],))
    old_logp = jax.lax.stop_gradient(old_logp)
    obj, ratio, is_clipped = clipped_surrogate(logp, old_logp, jax.lax.stop_gradient(advantages),
                                               cfg.eps_low, cfg.eps_high)
    per_token = -obj
    kl = jnp.zeros_like(logp)
    if cfg.beta != 0.0:
        if ref_logp is None:
            raise GRPOConfigError("beta != 0 needs ref_logp from the frozen reference model (or set beta=0)")
        kl = k3_kl(logp, jax.lax.stop_gradient(ref_logp))
        per_token = per_token + cfg.beta * kl
    agg = dict(aggregation=cfg.aggregation, max_len=cfg.max_len, seq_weights=seq_weights)
    loss = aggregate(per_token, mask, **agg)
    m = mask.astype(jnp.float32)
    if seq_weights is not None:
        m = m * seq_weights.astype(jnp.float32)[:, None]
    n_tok = jnp.maximum(m.sum(), 1.0)
    metrics = {
        "loss": loss,
        "kl": (kl * m).sum() / n_tok,
        "clip_frac": (is_clipped.astype(jnp.float32) * m).sum() / n_tok,
        "ratio_mean": (ratio * m).sum() / n_tok,
        "tokens": m.sum(),
    }
    return loss, metrics


def sequence_weights(rewards: jax.Array, cfg: GRPOConfig) -> jax.Array | None:
    """DAPO's dynamic-sampling weights (1 keep, 0 drop) when cfg.dynamic_sampling, else None."""
    if not cfg.dynamic_sampling:
        return None
    return group_keep_mask(rewards, cfg.group_size).astype(jnp.float32)


def advantages_for(rewards: jax.Array, cfg: GRPOConfig) -> jax.Array:
    """:func:`group_advantages` with the configuration's normalisation."""
    return group_advantages(rewards, cfg.group_size, std_normalize=cfg.std_normalize,
                            eps=cfg.adv_eps, ddof=cfg.std_ddof)
