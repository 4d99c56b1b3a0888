"""Rollouts: logprobs equal a teacher-forced pass, recurrent == parallel form, stops, sampling maths."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hqf_jax.ops.constants import BOS_ID, BYTE_VOCAB_SIZE, EOS_ID, PAD_ID
from hqf_jax.rl import rollout as ro
from hqf_jax.rl.sampling import process_logits, token_stats
from hqf_jax.rl.toy_policy import TinyGRULM


class Bigram(nnx.Module):
    """Deterministic chain x -> a -> b -> newline -> newline ... (for stop handling)."""

    def __init__(self):
        t = np.full((BYTE_VOCAB_SIZE, BYTE_VOCAB_SIZE), -30.0, np.float32)
        for a, b in [(ord("x"), ord("a")), (ord("a"), ord("b")), (ord("b"), ord("\n")), (ord("\n"), ord("\n")),
                     (ord("q"), EOS_ID), (ord("z"), ord("z"))]:
            t[a, b] = 30.0
        self.table = nnx.Param(jnp.asarray(t))

    def init_state(self, batch_size):
        return jnp.zeros((batch_size,), jnp.int32)

    def step(self, token, state):
        return self.table[...][token], state + 1

    def __call__(self, tokens):
        return self.table[...][tokens]


PROMPTS = [b"hello", b"hi", b"a longer prompt"]


def _gru():
    return TinyGRULM(rngs=nnx.Rngs(0))


def test_logprobs_equal_teacher_forcing_and_parallel_form():
    model = _gru()
    p, lens = ro.encode_prompts(PROMPTS)
    cfg = ro.SampleConfig(max_new_tokens=12, temperature=0.8, top_p=0.9, top_k=50)
    key = jax.random.key(3)
    r = ro.rollout(model, p, lens, key, cfg)
    assert r.tokens.shape == (3, p.shape[1] + 12)
    np.testing.assert_array_equal(np.asarray(r.lengths), np.asarray(r.mask).sum(1))
    logits = model(r.tokens)
    tf_lp, tf_ent, tf_var = ro.teacher_forced_stats(logits, r.tokens)
    live = np.asarray(r.mask).copy()
    for i, n in enumerate(lens):
        live[i, 1:n] = True  # prompt positions are scored too
    for got, want in [(r.logprobs, tf_lp), (r.entropy, tf_ent), (r.varentropy, tf_var)]:
        np.testing.assert_allclose(np.asarray(got)[live], np.asarray(want)[live], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ro.teacher_forced_logprobs(model, r.tokens))[live],
                               np.asarray(tf_lp)[live], rtol=1e-5, atol=1e-5)
    # prompts are kept verbatim
    for i, n in enumerate(lens):
        np.testing.assert_array_equal(np.asarray(r.tokens)[i, :n], p[i, :n])
    # the naive parallel-recompute form draws the same tokens with the same key
    rp = ro.rollout(model, p, lens, key, cfg, form="parallel")
    np.testing.assert_array_equal(np.asarray(rp.tokens), np.asarray(r.tokens))
    np.testing.assert_allclose(np.asarray(rp.logprobs), np.asarray(r.logprobs), atol=1e-4)


def test_seed_determinism_and_greedy():
    model = _gru()
    p, lens = ro.encode_prompts(PROMPTS)
    cfg = ro.SampleConfig(max_new_tokens=8)
    a = ro.rollout(model, p, lens, jax.random.key(1), cfg)
    b = ro.rollout(model, p, lens, jax.random.key(1), cfg)
    c = ro.rollout(model, p, lens, jax.random.key(2), cfg)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
    g = ro.rollout(model, p, lens, jax.random.key(1), ro.SampleConfig(max_new_tokens=8, top_k=1))
    m = np.asarray(g.mask)
    np.testing.assert_allclose(np.asarray(g.sample_logprobs)[m], 0.0, atol=1e-6)  # greedy: p_sample = 1
    tf = ro.teacher_forced_stats(model(g.tokens), g.tokens)[0]
    logits = np.asarray(model(g.tokens)).copy()
    logits[..., [BOS_ID, PAD_ID]] = -np.inf  # suppressed by default
    toks = np.asarray(g.tokens)
    for i, j in zip(*np.nonzero(m)):
        assert toks[i, j] == logits[i, j - 1].argmax()
    assert np.all(np.asarray(tf)[m] <= 0)


def test_stops_mask_and_padding():
    model = Bigram()
    prompts = [b"x", b"q", b"z"]
    p, lens = ro.encode_prompts(prompts)
    cfg = ro.SampleConfig(max_new_tokens=6, stop_sequences=(b"\n\n",))
    r = ro.rollout(model, p, lens, jax.random.key(0), cfg)
    toks = np.asarray(r.tokens)
    # row 0: x -> a b \n \n (stop sequence, kept) then PAD
    assert bytes(toks[0, 2:6].tolist()) == b"ab\n\n" and np.all(toks[0, 6:] == PAD_ID)
    np.testing.assert_array_equal(np.asarray(r.mask)[0], [0, 0, 1, 1, 1, 1, 0, 0])
    # row 1: q -> EOS (stop token), one generated token
    assert toks[1, 2] == EOS_ID and np.all(toks[1, 3:] == PAD_ID)
    # row 2: z z z ... never stops: max_new_tokens
    np.testing.assert_array_equal(np.asarray(r.lengths), [4, 1, 6])
    np.testing.assert_array_equal(np.asarray(r.stopped), [True, True, False])
    assert ro.completion_bytes(r, strip=[b"\n\n"]) == [b"ab", b"", b"zzzzzz"]
    assert toks[0, 0] == BOS_ID


def test_sampling_maths_hand_cases():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    k2 = np.asarray(process_logits(logits, top_k=2))
    assert np.all(k2[0, 2:] < -1e29) and np.all(k2[0, :2] > -10)
    # top_p 0.7: 0.5 alone < 0.7, so {0.5, 0.3} is the smallest set reaching it
    p7 = np.asarray(process_logits(logits, top_p=0.7))
    assert np.all(p7[0, 2:] < -1e29) and np.all(p7[0, :2] > -10)
    p5 = np.asarray(process_logits(logits, top_p=0.5))  # the top token alone reaches 0.5
    assert np.sum(p5[0] > -10) == 1
    t2 = np.asarray(jax.nn.softmax(process_logits(logits, temperature=2.0)))
    want = np.sqrt([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(t2[0], want / want.sum(), rtol=1e-5)
    # two-point distribution (3/4, 1/4): H = -(3/4 ln 3/4 + 1/4 ln 1/4), Var = p(1-p) (ln 3)^2
    lp, h, v = token_stats(jnp.log(jnp.array([[0.75, 0.25]])), jnp.array([1]))
    np.testing.assert_allclose(float(lp[0]), math.log(0.25), rtol=1e-6)
    np.testing.assert_allclose(float(h[0]), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rtol=1e-6)
    np.testing.assert_allclose(float(v[0]), 0.1875 * math.log(3) ** 2, rtol=1e-5)
    _, hu, vu = token_stats(jnp.zeros((1, 7)), jnp.array([0]))  # uniform: H = ln 7, Var = 0
    np.testing.assert_allclose([float(hu[0]), float(vu[0])], [math.log(7), 0.0], atol=1e-5)


def test_errors_name_the_fix():
    with pytest.raises(ro.RolloutError, match="top_k=1"):
        ro.SampleConfig(temperature=0.0)
    with pytest.raises(ro.RolloutError, match="lacks"):
        ro.rollout(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), np.zeros((1, 1), np.int32), np.ones(1, np.int32),
                   jax.random.key(0), ro.SampleConfig())


def test_retnet_rollout_logprobs_equal_teacher_forced_pass():
    from hqf_jax.nn.retnet import RetNetConfig, RetNetLM

    cfg = RetNetConfig(d_model=32, num_layers=1, num_heads=2, qk_dim=32, v_dim=64, ffn_dim=64, chunk_size=8)
    model = RetNetLM(cfg, nnx.Rngs(0))
    assert ro.supports_prefill(model)
    p, lens = ro.encode_prompts([b"compress me please", b"and me, too", b"0123456789abc"])
    sc = ro.SampleConfig(max_new_tokens=10, temperature=0.9, top_p=0.95)
    key = jax.random.key(5)
    r = ro.rollout(model, p, lens, key, sc)  # prefills the first 8 tokens chunkwise, then steps
    r_step = ro.rollout(model, p, lens, key, sc, prefill=False)
    np.testing.assert_array_equal(np.asarray(r.tokens), np.asarray(r_step.tokens))
    logits = nnx.jit(lambda m, t: m(t))(model, r.tokens)  # teacher-forced, chunkwise training form
    tf = np.asarray(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1], -1), r.tokens[:, 1:, None], -1)[..., 0])
    live = np.asarray(r.mask).copy()
    for i, n in enumerate(lens):
        live[i, 1:n] = True
    for roll in (r, r_step):
        np.testing.assert_allclose(np.asarray(roll.logprobs)[:, 1:][live[:, 1:]], tf[live[:, 1:]], atol=2e-4)
    assert np.asarray(r.mask).sum() > 0
