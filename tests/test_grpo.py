"""GRPO variants against hand-computed values (plain python loops over the papers' formulas)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hqf_jax.rl import grpo

# Two groups of G=3 samples, T=4 positions; masks give completion lengths 3, 2, 4 | 1, 4, 2.
REWARDS = np.array([1.0, 0.0, 0.5, 2.0, 2.0, -1.0], np.float32)
LENS = [3, 2, 4, 1, 4, 2]
MASK = np.array([[t < n for t in range(4)] for n in LENS])
RNG = np.random.default_rng(0)
OLD = RNG.normal(-1.5, 0.5, (6, 4)).astype(np.float32)
LOGP = (OLD + RNG.normal(0.0, 0.3, (6, 4))).astype(np.float32)
REF = (OLD + RNG.normal(0.0, 0.3, (6, 4))).astype(np.float32)


def hand_adv(std_normalize, ddof=1, eps=1e-4):
    out = []
    for g in range(2):
        r = [float(x) for x in REWARDS[3 * g:3 * g + 3]]
        mu = sum(r) / 3
        sd = math.sqrt(sum((x - mu) ** 2 for x in r) / (3 - ddof))
        out += [(x - mu) / (sd + eps) if std_normalize else x - mu for x in r]
    return out


def hand_token_loss(i, t, adv, eps_low, eps_high, beta):
    ratio = math.exp(float(LOGP[i, t]) - float(OLD[i, t]))
    obj = min(ratio * adv[i], min(max(ratio, 1 - eps_low), 1 + eps_high) * adv[i])
    d = float(REF[i, t]) - float(LOGP[i, t])
    kl = math.exp(d) - d - 1
    return -obj + beta * kl


def test_advantages_hand():
    # group 1: r = 1, 0, 0.5 -> mean 0.5, unbiased std 0.5 -> A = 1, -1, 0 (up to eps)
    a = np.asarray(grpo.group_advantages(jnp.asarray(REWARDS), 3, eps=0.0))
    np.testing.assert_allclose(a[:3], [1.0, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(a, hand_adv(True, eps=0.0), rtol=1e-5)
    a_dr = np.asarray(grpo.group_advantages(jnp.asarray(REWARDS), 3, std_normalize=False))
    np.testing.assert_allclose(a_dr, [0.5, -0.5, 0.0, 1.0, 1.0, -2.0], atol=1e-6)


def test_k3_is_nonnegative_and_exact():
    lp = jnp.array([-1.0, -2.0, -0.5])
    ref = jnp.array([-1.0, -1.0, -3.0])
    kl = np.asarray(grpo.k3_kl(lp, ref))
    want = [0.0, math.e - 1 - 1, math.exp(-2.5) + 2.5 - 1]
    np.testing.assert_allclose(kl, want, rtol=1e-6)


@pytest.mark.parametrize("variant", ["grpo", "dr_grpo", "dapo"])
def test_loss_matches_hand(variant):
    cfg = grpo.grpo_config(variant, group_size=3, max_len=4, beta=0.05)
    adv = hand_adv(cfg.std_normalize, eps=cfg.adv_eps)
    keep = [1.0] * 6
    if variant == "dapo":
        keep = [1.0 if max(REWARDS[3 * (i // 3):3 * (i // 3) + 3]) != min(REWARDS[3 * (i // 3):3 * (i // 3) + 3])
                else 0.0 for i in range(6)]
    tl = [[hand_token_loss(i, t, adv, cfg.eps_low, cfg.eps_high, 0.05) for t in range(LENS[i])] for i in range(6)]
    if variant == "grpo":  # 1/G sum_i 1/|o_i| sum_t
        want = sum(sum(row) / len(row) for row in tl) / 6
    elif variant == "dr_grpo":  # 1/G sum_i sum_t / MAX_LEN
        want = sum(sum(row) for row in tl) / (6 * 4)
    else:  # 1/sum_i |o_i| sum_i sum_t over kept groups
        want = sum(k * sum(row) for k, row in zip(keep, tl)) / sum(k * len(row) for k, row in zip(keep, tl))
    rewards = jnp.asarray(REWARDS)
    loss, metrics = grpo.grpo_loss(jnp.asarray(LOGP), jnp.asarray(OLD), jnp.asarray(REF), jnp.asarray(MASK),
                                   grpo.advantages_for(rewards, cfg), cfg, grpo.sequence_weights(rewards, cfg))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert 0.0 <= float(metrics["clip_frac"]) <= 1.0


def test_dapo_dynamic_sampling_drops_equal_groups():
    r = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(grpo.group_keep_mask(r, 3)), [0, 0, 0, 1, 1, 1])
    # a dropped group changes nothing: the loss equals the loss over the kept group alone
    cfg = grpo.grpo_config("dapo", group_size=3)
    adv = grpo.advantages_for(r, cfg)
    full, _ = grpo.grpo_loss(jnp.asarray(LOGP), jnp.asarray(OLD), None, jnp.asarray(MASK), adv, cfg,
                             grpo.sequence_weights(r, cfg))
    half, _ = grpo.grpo_loss(jnp.asarray(LOGP[3:]), jnp.asarray(OLD[3:]), None, jnp.asarray(MASK[3:]), adv[3:], cfg)
    np.testing.assert_allclose(float(full), float(half), rtol=1e-6)


def test_clip_higher_and_clip_fraction():
    # one token per sequence: ratios e^{0.25}=1.284 (A>0), e^{-0.3}=0.741 (A<0), e^{0.1} (A>0)
    lp = jnp.array([[0.25], [-0.3], [0.1]])
    old = jnp.zeros((3, 1))
    adv = jnp.array([1.0, -1.0, 1.0])
    obj, ratio, clipped = grpo.clipped_surrogate(lp, old, adv, 0.2, 0.28)
    # 1.284 > 1.2 but < 1.28? e^0.25 = 1.2840 > 1.28: clipped at 1.28; 0.741 < 0.8 with A<0: clipped at -0.8
    np.testing.assert_allclose(np.asarray(obj)[:, 0], [1.28, -0.8, math.exp(0.1)], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(clipped)[:, 0], [True, True, False])
    obj_sym, _, _ = grpo.clipped_surrogate(lp, old, adv, 0.2, 0.2)
    np.testing.assert_allclose(float(obj_sym[0, 0]), 1.2, rtol=1e-6)


def test_on_policy_gradient_is_minus_advantage_over_length():
    # at ratio 1 and beta 0: d loss / d logp_it = -A_i / (G |o_i|) for GRPO, -A_i / (G MAX_LEN) for Dr. GRPO
    adv = jnp.array([1.0, -2.0])
    mask = jnp.array([[1, 1, 0], [1, 1, 1]], bool)
    old = jnp.full((2, 3), -1.0)
    for variant, denom in [("grpo", np.array([[2.0], [3.0]])), ("dr_grpo", np.array([[3.0], [3.0]]))]:
        cfg = grpo.grpo_config(variant, group_size=2, max_len=3, beta=0.0)
        g = jax.grad(lambda lp: grpo.grpo_loss(lp, old, None, mask, adv, cfg)[0])(old)
        want = -np.asarray(adv)[:, None] / (2 * denom) * np.asarray(mask)
        np.testing.assert_allclose(np.asarray(g), want, rtol=1e-6)


def test_config_errors_name_the_fix():
    with pytest.raises(grpo.GRPOConfigError, match="max_len"):
        grpo.grpo_config("dr_grpo")
    with pytest.raises(grpo.GRPOConfigError, match="valid keys"):
        grpo.grpo_config("grpo", epsilon=0.1)
    with pytest.raises(grpo.GRPOConfigError, match="ref_logp"):
        cfg = grpo.grpo_config("grpo", group_size=3)
        grpo.grpo_loss(jnp.asarray(LOGP), jnp.asarray(OLD), None, jnp.asarray(MASK), jnp.zeros(6), cfg)
