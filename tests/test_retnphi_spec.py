"""RetNPhi's extra byte heads and self-speculative decoding through RecurrentEngine (hqf_jax.infer.speculative):
the verify pass's absorbed state equals running the accepted bytes alone (rows at their own positions), greedy
output equals plain RecurrentEngine greedy decoding, sampled bytes have the plain sampler's distribution (the
byte LM's chi-square check), and a model without heads is refused. That the heads train through train.retnphi is
checked in tests/test_train_retnphi.py (its tiny HF base fixture is built once there)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hqf_jax.infer import EngineError
from hqf_jax.infer.recurrent import RecurrentEngine
from hqf_jax.infer.speculative import speculative_generate
from tests.speculative_checks import check_sampling_equals_plain
from hqf_jax.infer.step import absorb
from hqf_jax.nn.hf_decoder import DecoderConfig, HFDecoderLM
from hqf_jax.nn.retnphi import RetNPhi, RetNPhiConfig


def retnphi_with_heads(k=2, std=0.5):
    """A tiny random RetNPhi with peaked next-byte laws (head rows of std 0.5: logits of std ~3); the extra heads
    copy the byte head, so drafts are sometimes right and sometimes wrong (both branches of acceptance run)."""
    hf = dict(model_type="llama", vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0,
              rms_norm_eps=1e-5)
    dec = HFDecoderLM(DecoderConfig.from_hf(hf), rngs=nnx.Rngs(0))
    m = RetNPhi.from_decoder(dec, RetNPhiConfig(byte_init="random", chunk_size=4, extra_heads=k))
    w = jax.random.normal(jax.random.PRNGKey(1), m.byte_head.weight.get_value().shape) * std
    for head in [m.byte_head, *(m.extra_heads if k else [])]:
        head.weight.set_value(jnp.copy(w))
    return m


@pytest.fixture(scope="module")
def engine():
    return RecurrentEngine(retnphi_with_heads(), dtype="float32")


def test_absorbed_state_equals_the_accepted_prefix_run_alone(engine):
    m = engine.model
    x = jnp.asarray([list(b"def f(x):"), list(b"import os")], jnp.int32)
    chunk = jnp.asarray([list(b"abc"), list(b"xyz")], jnp.int32)
    nxt = jnp.asarray([[7, 8], [9, 10]], jnp.int32)
    keep = jnp.asarray([1, 3])

    @nnx.jit
    def spec(m):  # prompt, verify chunk, keep 1 and 3 of its bytes, then both rows on in one call
        _, state = m(x, m.init_state(2), return_state=True)
        state = tuple(s._replace(offset=jnp.full((2,), s.offset)) for s in state)
        kvs = []
        m(chunk, state, form="chunkwise", return_state=True, kvs=kvs)
        got = absorb(kvs, keep)
        return got, m(nxt, got, form="chunkwise")

    @functools.partial(nnx.jit, static_argnums=(1, 2))
    def alone(m, r, n):  # row r's prompt and its first n chunk bytes, run as plain input
        _, ref = m(jnp.concatenate([x[r:r + 1], chunk[r:r + 1, :n]], 1), m.init_state(1), return_state=True)
        return ref, m(nxt[r:r + 1], ref)

    got, got_logits = spec(m)
    for r, n in enumerate((1, 3)):
        ref, ref_logits = alone(m, r, n)
        for g, s in zip(got, ref):
            np.testing.assert_allclose(np.asarray(g.kv[r]), np.asarray(s.kv[0]), rtol=1e-5, atol=1e-5)
            assert int(g.offset[r]) == int(s.offset) == x.shape[1] + n
        np.testing.assert_allclose(np.asarray(got_logits[r]), np.asarray(ref_logits[0]), rtol=1e-4, atol=1e-4)


def test_greedy_equals_plain_recurrent_engine_greedy(engine):
    prompts = [b"def f(x):", b"import os", b"class A:\n"]
    ids, stats = speculative_generate(engine, prompts, 24)
    np.testing.assert_array_equal(ids, engine.generate_ids(prompts, 24))
    assert 1.0 <= stats["bytes_per_verify"] <= 3.0 and stats["heads"] == 2


def test_padded_batch_leaves_the_real_row_unchanged(engine, monkeypatch):
    """RecurrentEngine(min_rows=4): speculative decoding pads one prompt to 4 rows (copies of row 0, dropped);
    the real row's sampled bytes and verify counts are those of the unpadded run."""
    want = speculative_generate(engine, [b"def f(x):"], 16, temperature=1.0, seed=5)
    monkeypatch.setattr(engine, "min_rows", 4)
    got = speculative_generate(engine, [b"def f(x):"], 16, temperature=1.0, seed=5)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1]


def test_sampled_distribution_equals_plain_sampling(engine):
    check_sampling_equals_plain(engine)


def test_errors_name_the_fix(engine):
    with pytest.raises(EngineError, match="retnphi.extra_heads"):
        speculative_generate(RecurrentEngine(retnphi_with_heads(k=0), dtype="float32"), [b"x"], 4)
    with pytest.raises(EngineError, match="one length"):
        speculative_generate(engine, [b"a", b"bc"], 4)
