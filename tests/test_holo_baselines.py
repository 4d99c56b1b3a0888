"""Baselines of the holographic evaluation: HRR, FHRR, Kneser-Ney n-gram; language helpers."""

import argparse
import dataclasses
import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hqf_jax.holo import baselines as bl
from hqf_jax.holo import language
from hqf_jax.holo import memory as hm
from hqf_jax.holo.ngram import KneserNey

# jitted: one compile per shape, not one per primitive and shape in eager mode
_jit = lambda f: jax.jit(f, static_argnums=(1, 2))  # codebooks: (key, vocab, dim)
HRR = (bl.hrr_init, _jit(bl.hrr_codebook), jax.jit(bl.hrr_store), jax.jit(bl.hrr_scores))
FHRR = (bl.fhrr_init, _jit(bl.fhrr_codebook), jax.jit(bl.fhrr_store), jax.jit(bl.fhrr_scores))


def _pairs(n, vocab, seed):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, vocab, (n, 4)), jnp.int32), jnp.asarray(rng.integers(0, vocab, n), jnp.int32)


def test_hrr_and_fhrr_recall_few_pairs_and_degrade():
    for init, book, store, scores in (HRR, FHRR):
        cb = book(jax.random.key(0), 512, 256)
        accs = []
        for n in (1, 8, 400):
            ctx, tgt = _pairs(n, 512, n)
            tr = store(init(1, 256), cb, ctx, tgt)
            accs.append(float(jnp.mean(jnp.argmax(scores(tr, cb, ctx), axis=1) == tgt)))
        assert accs[0] == 1.0 and accs[1] >= 0.75 and accs[2] < 0.2, accs


def test_vsa_keys_are_order_sensitive():
    init, book, store, scores = FHRR
    cb = book(jax.random.key(1), 64, 64)
    ctx = jnp.array([[1, 2, 3, 4]], jnp.int32)
    tr = store(init(1, 64), cb, ctx, jnp.array([5]))
    s_fwd = scores(tr, cb, ctx)[0, 5]
    s_rev = scores(tr, cb, ctx[:, ::-1])[0, 5]
    assert float(s_fwd) > 0.99 * 32 and abs(float(s_rev)) < 0.5 * 32


def _kn_reference(stream, order, ctx):
    """Direct dictionary implementation of interpolated KN for one context (test oracle)."""
    s = bytes(stream)
    grams = {k: collections.Counter(s[i : i + k] for i in range(len(s) - k + 1)) for k in range(1, order + 2)}
    cont = {}
    for k in range(1, order):
        c = collections.Counter()
        for g in grams[k + 1]:
            c[g[1:]] += 1
        cont[k] = c
    cnt = {k: (grams[k] if k == order else cont[k]) for k in range(1, order + 1)}
    disc = {}
    for k in range(1, order + 1):
        vals = list(cnt[k].values())
        n1, n2 = vals.count(1), vals.count(2)
        disc[k] = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
    p = np.full(256, 1 / 256)
    for k in range(1, order + 1):
        h = bytes(ctx[len(ctx) - (k - 1) :]) if k > 1 else b""
        row = np.array([cnt[k].get(h + bytes([w]), 0) for w in range(256)], float)
        tot = row.sum()
        if tot == 0:
            continue
        d = disc[k]
        p = np.maximum(row - d, 0) / tot + d * np.count_nonzero(row) / tot * p
    return p


def test_kneser_ney_matches_dictionary_reference():
    stream = np.frombuffer(b"abracadabra abracadabra cadabra bra ca", np.uint8)
    kn = KneserNey(3).fit(stream)
    for ctx in (b"ab", b"ra", b"zz", b" c"):
        got = kn.distribution(np.frombuffer(ctx, np.uint8)[None])[0]
        np.testing.assert_allclose(got, _kn_reference(stream, 3, ctx), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-12)
    r = kn.evaluate(stream)
    assert 0 < r["bpb"] < 8 and 0 < r["top1"] <= 1


def test_language_windows_and_word_accuracy_oracle():
    stream = np.frombuffer(b"def foo(x):\n    return x + 1\n", np.uint8)
    ctx, tgt = language.windows(stream, 3, np.array([3, 10]))
    assert bytes(ctx[0].astype(np.uint8)) == b"def" and tgt[0] == ord(" ")
    starts = language.word_starts(stream, 3, 100)
    assert [bytes(stream[s : s + 3]) for s in starts[:3]] == [b"foo", b"x):", b"ret"]

    step = [0]

    def oracle(c):  # knows the true continuation: step j of the greedy decode predicts stream[start + j]
        out = stream[np.minimum(starts + step[0], len(stream) - 1)]
        step[0] += 1
        return out

    assert language.greedy_word_accuracy(oracle, stream, 3, starts) == 1.0
    assert language.greedy_word_accuracy(lambda c: np.zeros(len(c), int), stream, 3, starts) == 0.0


def test_memory_language_training_and_evaluation_smoke():
    rng = np.random.default_rng(0)
    text = np.frombuffer(b"".join(rng.choice([b"alpha ", b"beta ", b"gamma "], 400).tolist()), np.uint8)
    cfg = hm.HoloConfig(vocab_size=256, context_len=3, levels=2, cache_capacity=1 << 10, proto_depth=1, proto_k=4)
    vec = language.cooccurrence_vectors(text, 256)
    assert vec.shape == (256, 512)
    state = language.train_memory(hm.init_memory(cfg), cfg, text, batch_size=512, dream_every=2, progress=False)
    r = language.evaluate_memory(state, cfg, text[:600], batch_size=256, grid=[(0.5, 0.5, 0.3), (0.1, 0.9, 0.6)])
    assert r["top1"] > 0.75 and r["episodic_hit_rate"] == 1.0  # seen text, three words
    assert r["bpb"] == min(r["bpb_grid"]) and math.isfinite(r["bpb"])
    # sampling from the mixture: near temperature 0 and without the floor it is the mixture's arg-max; at
    # the notes' phi^-1 it can only lose against the arg-max on text this predictable; both scores work
    for score in ("cosine", "vorticity"):
        cold = dataclasses.replace(cfg, score=score, temperature=1e-4, floor=0.0, mix_proto=0.0, mix_episodic=0.0)
        c = language.evaluate_memory(state, cold, text[:600], batch_size=256, sample_seed=0)
        assert c["top1_sample"] == pytest.approx(c["top1_mixture"], abs=0.01)
        warm = dataclasses.replace(cfg, score=score, temperature=0.618)
        w = language.evaluate_memory(state, warm, text[:600], batch_size=256, sample_seed=0)
        assert 0.0 < w["top1_sample"] <= w["top1_mixture"] + 0.02
    assert "top1_sample" not in r


@pytest.mark.slow
def test_capacity_eval_runs_tiny():
    from eval import holo_eval

    args = argparse.Namespace(vocab=256, context_len=3, levels=1, cache_slots=1 << 12, test_pairs=200, batch=256,
                              max_pairs=1000, seed=0)
    res = holo_eval.run_capacity(args)
    assert res["points"] == [1000]
    assert res["curves"]["holo-tower+cache (4096 slots)"][0] == 1.0
    assert res["curves"]["holo-1 (one 4x4)"][0] < 0.1


def test_spread_takes_disjoint_evenly_spaced_chunks():
    s = np.arange(100_000) % 251
    a = language.spread(s.astype(np.uint8), 20_000, chunk=1000, parity=0)
    b = language.spread(s.astype(np.uint8), 20_000, chunk=1000, parity=1)
    assert len(a) == len(b) == 20_000
    full = language.spread(s.astype(np.uint8), 30_000, chunk=1000)
    assert len(full) == 30_000 and full[-1] == s[-1]  # reaches the end of the stream


def test_fhrr_unbinds_a_single_pair_exactly():
    """One pair in a trace: multiplying by the conjugate key returns the target phasor itself (exact inverse),
    so the target scores d/2 (= <v, v> over d/2 unit phasors) and every other token scores far less."""
    d, vocab = 128, 300
    init, book, store, scores = FHRR
    ph = book(jax.random.key(3), vocab, d)
    ctx, tgt = jnp.array([[7, 1, 299, 42]], jnp.int32), jnp.array([11], jnp.int32)
    tr = store(init(1, d), ph, ctx, tgt)
    k = np.asarray(ph, np.float64)[[7, 1, 299, 42]]
    key = sum(np.roll(k[l], l) for l in range(4))  # reference: phase of the ordered, rolled binding
    trace = np.asarray(tr[0, 0], np.float64) + 1j * np.asarray(tr[0, 1], np.float64)
    np.testing.assert_allclose(trace * np.exp(-1j * key), np.exp(1j * np.asarray(ph[11], np.float64)), atol=1e-4)
    s = np.asarray(scores(tr, ph, ctx))[0]
    assert abs(s[11] - d / 2) < 1e-3 and np.max(np.delete(s, 11)) < 0.5 * d / 2


@pytest.mark.parametrize("kind", ["hrr", "fhrr"])
def test_vsa_store_valid_mask_equals_storing_only_the_valid_rows(kind):
    init, book, store, _ = HRR if kind == "hrr" else FHRR
    cb = book(jax.random.key(0), 64, 32)
    ctx, tgt = _pairs(10, 64, 5)
    valid = jnp.arange(10) < 6
    masked = store(init(4, 32), cb, ctx, tgt, valid=valid)
    np.testing.assert_allclose(masked, store(init(4, 32), cb, ctx[:6], tgt[:6]), atol=1e-6)
    assert float(jnp.abs(masked - store(init(4, 32), cb, ctx, tgt)).max()) > 1e-3  # the mask did drop rows
