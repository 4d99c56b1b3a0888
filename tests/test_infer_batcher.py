"""The continuous batcher without HTTP: newcomers prefilled together get exactly the state each gets alone, every
request's bytes equal Engine.generate of it alone (greedy and seeded sampling, prompts of different lengths and
buckets, more requests than slots, lengths that end inside a chunk), a request that cannot be prefilled fails
alone, and the loop's slot-step counts add up."""

import jax
import numpy as np
import pytest
from flax import nnx

from hqf_jax.infer import Engine
from hqf_jax.infer.batcher import Batcher, Request
from hqf_jax.infer.engine import Settings
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM

PROMPTS = [b"a", b"hello", b"longer prompt!", b"", b"def f(x):\n    return", b"xyz"]


@pytest.fixture(scope="module")
def engine():
    cfg = RetNetConfig(d_model=32, num_layers=2, num_heads=2, qk_dim=32, v_dim=64, ffn_dim=64, chunk_size=8)
    return Engine(RetNetLM(cfg, nnx.Rngs(0)), dtype="float32", prompt_bucket=8)


def alone(engine, r: Request) -> bytes:
    """Engine.generate of the request alone (30 bytes, cut: a row's first n bytes do not depend on how many
    follow; one compiled loop for every test)."""
    ids = engine.generate_ids([r.prompt], 30, seed=[r.seed], temperature=r.temperature, top_p=r.top_p)
    return bytes(int(i) for i in ids[0, :r.max_tokens])


def stopped(engine, slots=4, chunk=8):
    """A batcher whose loop has exited, so a test can drive ``_admit`` itself."""
    b = Batcher(engine, slots=slots, chunk=chunk)
    b.stop()
    return b


def test_join_gives_each_row_the_state_it_gets_alone(engine):
    b = stopped(engine)
    group = [(0, Request(b"hello", 4, 0.0, seed=3)), (2, Request(b"abc", 4, 1.0, top_p=0.9, seed=7)),
             (3, Request(b"", 4, 1.0, seed=11))]  # one length bucket (prompt_bucket 8), slot 1 left out
    before = b.state
    joined = b.join(before, group)
    for slot, r in group:
        one = engine.prefill([r.prompt], Settings.make(1, [r.seed], r.temperature, r.top_k, r.top_p))
        for got, want in zip(jax.tree.leaves(joined), jax.tree.leaves(one)):
            np.testing.assert_array_equal(np.asarray(got)[slot], np.asarray(want)[0])
    for got, kept in zip(jax.tree.leaves(joined), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(got)[1], np.asarray(kept)[1])  # a slot not joined is untouched


def test_admit_prefills_each_bucket_once_and_the_rows_decode_as_alone(engine):
    b = stopped(engine)
    reqs = [Request(b"hi", 12, 0.0), Request(b"a much longer prompt", 12, 1.0, seed=5),
            Request(b"mid", 12, 1.0, top_p=0.8, seed=9), Request(b"another long one here", 12, 0.0)]
    for r in reqs:
        b.pending.put(r)
    b._admit()
    assert b.active == reqs  # slot i holds the i-th request
    assert b.loop_stats.prefill_calls == 2 and b.loop_stats.prefill_rows == 4  # two length buckets: two calls
    _, ids = engine.decode(b.state, 12)
    for slot, r in enumerate(reqs):
        assert bytes(int(i) for i in ids[slot]) == alone(engine, r)


def test_a_request_that_cannot_be_prefilled_fails_alone(engine):
    b = stopped(engine)
    good, bad = Request(b"ok", 8, 0.0), Request(b"no", 8, -1.0)  # a negative temperature: Settings refuses it
    b.pending.put(good)
    b.pending.put(bad)
    b._admit()
    assert b.active[0] is good and b.active[1] is None
    assert bad.error and "prefill failed" in bad.error and bad.out.get_nowait() is None
    _, ids = engine.decode(b.state, 8)
    assert bytes(int(i) for i in ids[0]) == alone(engine, good)


@pytest.mark.parametrize("min_chunk", [None, 2])
def test_concurrent_requests_equal_generate_alone_and_the_counts_add_up(engine, min_chunk):
    slots, chunk = 3, 8
    b = Batcher(engine, slots=slots, chunk=chunk, min_chunk=min_chunk)
    try:
        reqs = [Request(p, n, t, seed=s, top_p=tp) for p, n, t, s, tp in
                zip(PROMPTS, [20, 13, 8, 30, 9, 17], [0.0, 1.0, 0.0, 1.0, 1.0, 0.0], [0, 1, 2, 3, 4, 5],
                    [1.0, 0.9, 1.0, 1.0, 0.7, 1.0])]
        for r in reqs:  # six requests on three slots, all at once: some wait, some end inside a chunk
            b.submit(r)
        got = [r.result() for r in reqs]
    finally:
        b.stop()
    for r, g in zip(reqs, got):
        assert g == alone(engine, r)
    s = b.loop_stats.summary()
    whole_chunks = sum(-(-r.max_tokens // chunk) * chunk - r.max_tokens for r in reqs)
    assert s["useful"] == sum(r.max_tokens for r in reqs)
    assert s["slot_steps"] == s["steps"] * slots and s["steps"] <= s["chunks"] * chunk
    assert s["prefill_rows"] == len(reqs) and 1 <= s["prefill_calls"] <= len(reqs)
    assert abs(s["useful_share"] + s["empty_share"] + s["overrun_share"] - 1) < 1e-9
    if min_chunk is None:
        assert s["overrun"] == whole_chunks and s["steps"] == s["chunks"] * chunk
    else:  # the first requests end inside a chunk while others wait for their slots: shorter calls
        assert b.lengths() == [8, 4, 2] and s["steps"] < s["chunks"] * chunk
