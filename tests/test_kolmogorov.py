"""Kolmogorov roles: prompts, reward, the varentropy gate on real rollouts, history, relaxation, patterns."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hqf_jax.ops.constants import BYTE_VOCAB_SIZE, EOS_ID
from hqf_jax.rl import kolmogorov as kg
from hqf_jax.rl.gate import GateConfig, gate_from_logits, item_positions
from hqf_jax.rl.history import HistoryBuffer, RelaxationSchedule
from hqf_jax.rl.rollout import SampleConfig, completion_bytes, encode_prompts, rollout
from hqf_jax.rl.toy_policy import ScriptPolicy, TinyGRULM, script_logits

SOURCE = b"abababab"
ITEMS = (b"q", b"z")


def test_prompts_and_constraints():
    c = kg.Constraints(inject=(b"q", b"z"), ban=(b"a",))
    assert kg.compressor_prompt(b"src", c, b"mem") == b"<c +q|z -a m=mem>src</c>"
    assert kg.compressor_prompt(b"src") == b"<c>src</c>"
    assert kg.decompressor_prompt(b"xy") == b"<d>xy</d>"
    rng = np.random.default_rng(0)
    cons = kg.sample_constraints(rng, b"hello world", n_inject=3, n_ban=2)
    assert len(cons.ban) == 2 and all(b in b"hello world" for b in cons.ban)
    assert len(cons.inject) == 3 and not set(cons.inject) & set(cons.ban)
    assert kg.constraint_scores(b"xqy", c) == (0.5, 0.0)
    assert kg.constraint_scores(b"qza", c) == (1.0, 1.0)
    qa = kg.make_questions(rng, b"0123456789", 3, q_len=3, a_len=2)
    for q, a in qa:
        i = b"0123456789".index(q)
        assert a == b"0123456789"[i + 3:i + 5]


def _scripted_code(code: bytes, spreads=None, sure=0.999):
    """Greedy rollout of a scripted C on SOURCE with injected ITEMS; returns (rollout, code bytes)."""
    prompt = kg.compressor_prompt(SOURCE, kg.Constraints(inject=ITEMS))
    toks, lens = encode_prompts([prompt])
    policy = ScriptPolicy(script_logits(int(lens[0]), list(code) + [EOS_ID], spreads, sure=sure))
    r = rollout(policy, toks, lens, jax.random.key(0), SampleConfig(max_new_tokens=16, top_k=1))
    return r, completion_bytes(r)[0], policy, toks, lens


def test_gate_verbatim_append_vs_dense_use():
    cfg = kg.KolmogorovConfig(lam=0.0, constraint_weight=0.5, gate=GateConfig("varentropy", "exp", tau=1.0))
    cons = [kg.Constraints(inject=ITEMS)]
    # appender: a copy of s then the items, every byte near-certain (a copy from the prompt)
    r_app, code_app, *_ = _scripted_code(SOURCE + b"qz", sure=0.9999)
    assert code_app == SOURCE + b"qz"
    # dense user: the items are emitted where the policy spreads its mass over many continuations
    dense = {ord("q"): 0.25, **{ord(ch): 0.049 for ch in "bcdefghijklmnop"}}
    dense_z = {ord("z"): 0.25, **{ord(ch): 0.049 for ch in "bcdefghijklmnop"}}
    code = b"aqbzabab"
    spreads = [None, dense, None, dense_z] + [None] * 5
    r_den, code_den, policy, toks, lens = _scripted_code(code, spreads)
    assert code_den == code
    sc_app = kg.score([SOURCE], [code_app], [SOURCE], r_app, cons, cfg)
    sc_den = kg.score([SOURCE], [code_den], [SOURCE], r_den, cons, cfg)
    # both use every injected item and reconstruct perfectly: only the gate tells them apart
    assert sc_app["used"][0] == sc_den["used"][0] == 1.0
    assert sc_app["fidelity"][0] == sc_den["fidelity"][0] == 1.0
    assert sc_app["reward"][0] < 0.05  # gated reward near zero
    assert sc_den["reward"][0] > 0.5
    # the gate is a function of the logits at the injected positions: recompute it from them
    pos = [p[0] for p in item_positions(code_den, ITEMS, int(lens[0]), True)]
    logits = policy(r_den.tokens)[0, jnp.asarray(pos) - 1]
    g = np.asarray(gate_from_logits(logits, cfg.gate))
    assert sc_den["gate"][0] == pytest.approx(float(g.mean()), rel=1e-4)
    # an unused item earns no gate: half the items -> at most half the gate, plus the penalty
    sc_half = kg.score([SOURCE], [b"aqbab"], [SOURCE], r_den, cons, cfg)
    assert sc_half["gate"][0] <= 0.5 * sc_den["gate"][0] + 1e-6
    # other gate kinds: a hard threshold separates them too; 'none' disables the gate
    hard = kg.KolmogorovConfig(lam=0.0, gate=GateConfig("entropy", "hard", threshold=1.0))
    assert kg.score([SOURCE], [code_app], [SOURCE], r_app, cons, hard)["gate"][0] == 0.0
    assert kg.score([SOURCE], [code_den], [SOURCE], r_den, cons, hard)["gate"][0] == 1.0
    off = kg.KolmogorovConfig(lam=0.0, gate=GateConfig(kind="none"))
    sc_off = kg.score([SOURCE], [code_app], [SOURCE], r_app, cons, off)
    assert sc_off["reward"][0] == 1.0 and sc_off["gate"][0] == 1.0
    # gate off still measures the signal (the gate-off arm's verbatim copies are seen): the same as gated
    assert sc_off["signal"][0] == pytest.approx(float(sc_app["signal"][0])) and np.isfinite(sc_off["signal"][0])


def test_reward_hand_case():
    cfg = kg.KolmogorovConfig(lam=0.5, fidelity="edit")
    r, *_ = _scripted_code(b"ab")
    sc = kg.score([b"abcd"], [b"ab"], [b"abcx"], r, [kg.Constraints()], cfg)
    # fidelity 1 - 1/4, ratio 2/4, no constraints -> gate 1: 0.75 - 0.5 * 0.5 = 0.5
    assert sc["reward"][0] == pytest.approx(0.5)
    banned = kg.score([b"abcd"], [b"ab"], [b"abcd"], r, [kg.Constraints(ban=(b"a",))], cfg)
    assert banned["reward"][0] == pytest.approx(1.0 - 0.25 - 0.5)


def test_history_buffer():
    h = HistoryBuffer(capacity=3, min_fidelity=0.5, seed=1)
    assert not h.add(b"s", b"", 1.0) and not h.add(b"s", b"c", 0.1)
    for i in range(5):
        assert h.add(b"s%d" % i, b"c%d" % i, 0.9, step=i)
    assert sorted(e.code for e in h.entries) == [b"c2", b"c3", b"c4"]
    h2 = HistoryBuffer.from_json(h.to_json())
    assert [e.code for e in h.sample(6)] == [e.code for e in h2.sample(6)]
    with pytest.raises(ValueError, match="empty"):
        HistoryBuffer().sample(1)


def test_relaxation_schedule():
    s = RelaxationSchedule(n_start=3, patience=4, min_delta=0.01)
    for i in range(20):  # improving steadily: no relaxation
        s.update(0.1 * i)
    assert s.n == 3
    flat = [s.update(1.0) for _ in range(30)]  # plateau: one step down per plateau, floor at n_min
    assert flat[-1] < 3 and min(flat) >= 0 and sorted(flat, reverse=True) == flat
    s2 = RelaxationSchedule.from_json(s.to_json())
    assert s2 == s


def _gru_cfg(**kw):
    return kg.KolmogorovConfig(group_size=2, code_budget=6, recon_budget=10, prompt_width=40, **kw)


def test_episode_cdv_and_ccv_and_cc():
    policy = TinyGRULM(rngs=nnx.Rngs(0))
    cfg = _gru_cfg(lam=0.3)
    sources = [b"abcabc", b"xyzxyz"]
    ep = kg.run_episode(policy, sources, jax.random.key(0), cfg)
    assert ep.c.tokens.shape == (4, 40 + 6) and ep.d.tokens.shape == (4, 40 + 10)
    assert [s for s, _, _ in ep.samples] == [b"abcabc"] * 2 + [b"xyzxyz"] * 2
    for (s, c, d), rw in zip(ep.samples, ep.rewards):  # reward recomputed from the byte triples
        assert rw == pytest.approx(kg.byte_fidelity(s, d, "chrf") - 0.3 * len(c) / len(s), abs=1e-6)
    for k in ("reward", "fidelity", "ratio", "gate", "c_entropy", "c_varentropy", "reward_std"):
        assert math.isfinite(ep.metrics[k])
    # C->C->V: past codes become sources
    h = HistoryBuffer(seed=0)
    h.add(b"abcabc", b"code1", 1.0)
    src = kg.ccv_sources(h, 2)
    assert src == [b"code1", b"code1"]
    ep2 = kg.run_episode(policy, src, jax.random.key(1), cfg)
    assert ep2.samples[0][0] == b"code1"
    # (C->D->V)->CC: memories enter C's prompt and are rewritten by C within the budget
    mems = kg.update_memories(policy, [b"", b"m"], kg.best_codes(ep, 2), jax.random.key(2), cfg)
    assert len(mems) == 2 and all(len(m) <= cfg.memory_budget for m in mems)
    ep3 = kg.run_episode(policy, sources, jax.random.key(3), _gru_cfg(pattern="cdv_cc"), memories=mems)
    assert ep3.rewards.shape == (4,)


def test_episode_cqav():
    policy = TinyGRULM(rngs=nnx.Rngs(0))
    cfg = _gru_cfg(pattern="cqav", n_questions=2, question_len=2, answer_len=2, fidelity="edit", lam=0.0)
    rng = np.random.default_rng(0)
    sources = [b"abcdefgh", b"hgfedcba"]
    qs = [kg.make_questions(rng, s, 2, 2, 2) for s in sources]
    ep = kg.run_episode(policy, sources, jax.random.key(0), cfg, questions=qs)
    assert ep.d.tokens.shape[0] == 8 and list(ep.d_owner) == [0, 0, 1, 1, 2, 2, 3, 3]
    answers = completion_bytes(ep.d)
    for i in range(4):
        truth = [a for _, a in qs[i // 2]]
        want = np.mean([kg.byte_fidelity(t, answers[2 * i + j], "edit") for j, t in enumerate(truth)])
        assert ep.rewards[i] == pytest.approx(want, abs=1e-6)
    with pytest.raises(kg.KolmogorovConfigError, match="make_questions"):
        kg.run_episode(policy, sources, jax.random.key(0), cfg)


def test_loglik_verifier_uniform_model():
    uniform = ScriptPolicy(np.zeros((1, BYTE_VOCAB_SIZE), np.float32))  # p = 1/259 everywhere
    v = kg.LogLikVerifier(uniform, width=32)
    np.testing.assert_allclose(v([b"abc", b"hello"], [b"abc", b""]), 1 / BYTE_VOCAB_SIZE, rtol=1e-5)
    with pytest.raises(kg.KolmogorovConfigError, match="pattern"):
        kg.KolmogorovConfig(pattern="cdvx")
