"""The inference engine computes what the model computes: float32 logits equal the model's parallel form and
its recurrent step on the same bytes, greedy output equals nn.generate.sample, rows of a padded batch equal
the same rows run alone, and per-row sampling equals the scalar sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hqf_jax.infer import Engine, EngineError, Settings
from hqf_jax.infer.step import forward, init_state
from hqf_jax.nn import generate
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM
from hqf_jax.ops import retention as ret
from hqf_jax.ops.sampling import sample_rows, sample_token


def tiny(position="xpos", **kw):
    cfg = RetNetConfig(d_model=64, num_layers=2, num_heads=2, qk_dim=64, v_dim=128, ffn_dim=128, chunk_size=8,
                       position=position, **kw)
    return RetNetLM(cfg, nnx.Rngs(0))


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model, dtype="float32", prompt_bucket=8)


@pytest.mark.parametrize("position", ["xpos", "rope"])
def test_forward_matches_parallel_and_recurrent_float32(position):
    model = tiny(position)
    eng = Engine(model, dtype="float32")
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 256, size=(3, 30)).astype(np.int32)
    lengths = np.array([11, 5, 17])  # prompt lengths; the rest is fed one byte at a time
    t = 24  # padded prompt width
    tokens = np.zeros((3, t), np.int32)
    for r, n in enumerate(lengths):
        tokens[r, t - n:] = seq[r, :n]
    valid = jnp.arange(t)[None] >= (t - jnp.asarray(lengths))[:, None]
    logits, state = jax.jit(lambda w: forward(nnx.merge(eng.graphdef, w), jnp.asarray(tokens),
                                              init_state(eng.cfg, jnp.asarray(lengths - t)), valid))(eng.weights)
    parallel = np.asarray(nnx.jit(lambda m, x: m(x, form="parallel"))(model, jnp.asarray(seq)))
    # the model's own recurrent step, row by row
    for r, n in enumerate(lengths):
        np.testing.assert_allclose(np.asarray(logits[r, -1]), parallel[r, n - 1], atol=2e-4, rtol=2e-4)
    steps = []
    step = jax.jit(lambda w, tok, st: forward(nnx.merge(eng.graphdef, w), tok[:, None], st))
    for i in range(6):
        lg, state = step(eng.weights, jnp.asarray([seq[r, n + i] for r, n in enumerate(lengths)]), state)
        steps.append(np.asarray(lg[:, 0]))
    # the model's own recurrent step (nn.generate's path), all rows in one scan over the 30 bytes
    def scan_steps(m, toks):
        def body(st, tok):
            lg, st = m.step(tok, st)
            return st, lg
        return jax.lax.scan(body, m.init_state(toks.shape[0]), toks.T)[1]

    ref = np.asarray(nnx.jit(scan_steps)(model, jnp.asarray(seq)))  # (T, B, V)
    for r, n in enumerate(lengths):
        for i in range(6):
            np.testing.assert_allclose(steps[i][r], ref[n + i, r], atol=2e-4, rtol=2e-4)
            np.testing.assert_allclose(steps[i][r], parallel[r, n + i], atol=2e-4, rtol=2e-4)


def test_greedy_equals_generate_sample(model, engine):
    prompts = [b"hello wor", b"the quic"]
    prompts = [p[:8] for p in prompts]
    ref = generate.sample(model, jnp.asarray(np.stack([generate.encode_prompt(p) for p in prompts])), 8,
                          jax.random.PRNGKey(0), temperature=0.0)
    np.testing.assert_array_equal(engine.generate_ids(prompts, 8), np.asarray(ref))


def test_rows_of_a_padded_batch_equal_rows_alone(engine):
    prompts = [b"a", b"a longer prompt, crossing two chunks", b"mid size"]
    for temperature, top_p in ((0.0, 1.0), (1.0, 0.9)):
        batch = engine.generate_ids(prompts, 8, seed=[3, 4, 5], temperature=temperature, top_p=top_p)
        for r, p in enumerate(prompts):
            alone = engine.generate_ids([p], 8, seed=[3 + r], temperature=temperature, top_p=top_p)
            np.testing.assert_array_equal(batch[r], alone[0])


def test_decode_in_chunks_equals_one_call(engine):
    s = Settings.make(2, seed=7, temperature=1.0)
    slots = engine.prefill([b"abc", b"xy"], s)
    _, whole = engine.decode(slots, 8)
    slots, a = engine.decode(slots, 4)
    _, b = engine.decode(slots, 4)
    np.testing.assert_array_equal(np.concatenate([a, b], 1), whole)


def test_put_joins_a_request_into_a_running_batch(engine):
    s = Settings.make(2, seed=[1, 2], temperature=0.0)
    slots = engine.prefill([b"first", b"second"], s)
    slots, _ = engine.decode(slots, 4)
    joined = engine.put(slots, engine.prefill([b"late"], Settings.make(1, seed=[9])), [1])
    _, ids = engine.decode(joined, 8)
    np.testing.assert_array_equal(ids[1], engine.generate_ids([b"late"], 8, seed=[9])[0])


def test_sample_rows_equals_sample_token_per_row():
    logits = jax.random.normal(jax.random.PRNGKey(1), (4, 259)) * 3
    keys = jax.random.split(jax.random.PRNGKey(2), 4)
    temps, ks, ps = [0.0, 1.0, 0.7, 1.3], [0, 0, 20, 5], [1.0, 0.9, 1.0, 0.5]
    rows = jax.jit(sample_rows, static_argnames="vocab_limit")  # jitted: one compile, not one per primitive
    one = jax.jit(sample_token, static_argnames=("temperature", "top_k", "top_p", "vocab_limit"))
    got = rows(keys, logits, jnp.asarray(temps), jnp.asarray(ks), jnp.asarray(ps), vocab_limit=256)
    for r in range(4):
        want = one(keys[r], logits[r], temperature=temps[r], top_k=ks[r], top_p=ps[r], vocab_limit=256)
        assert int(got[r]) == int(want)


def test_bf16_and_int8_engines_stay_close(model, engine):
    prompts = [b"some text to prefill"]
    lengths = jnp.asarray([len(prompts[0]) + 1])
    tokens, _ = engine._pad(prompts)
    t = tokens.shape[1]
    valid = jnp.arange(t)[None] >= (t - lengths)[:, None]
    ref, _ = jax.jit(lambda w: forward(nnx.merge(engine.graphdef, w), tokens, init_state(engine.cfg, lengths - t),
                                       valid))(engine.weights)
    for kw in (dict(dtype="float32", quant="int8"), dict(dtype="bfloat16")):
        eng = Engine(model, prompt_bucket=8, **kw)
        run = jax.jit(lambda w: forward(nnx.merge(eng.graphdef, w), tokens, init_state(eng.cfg, lengths - t), valid))
        got, _ = run(eng.weights)
        a, b = np.asarray(ref[0, -1]), np.asarray(got[0, -1])
        assert np.corrcoef(a, b)[0, 1] > 0.99, kw
    assert engine.weight_bytes() > eng.weight_bytes()


@pytest.mark.parametrize("method", ["nf4", "phi5u8"])
def test_nf4_and_phi_engines_are_their_quantized_models(model, method):
    """quant="nf4" / "phi5u8" through the engine: greedy bytes are the old path's on the same model quantized by
    quantize_model (reference impl), and the Triton kernels' engine (impl "pallas", interpret mode on a CPU) gives
    the reference engine's logits."""
    from hqf_jax.quant.model import quantize_model

    prompts = [b"def f(x):", b"import os"]
    ref_eng = Engine(model, dtype="float32", quant=method, quant_impl="reference", prompt_bucket=8)
    ref, _ = quantize_model(nnx.merge(*nnx.split(model)), method, impl="reference")
    old = generate.sample(ref, np.stack([generate.encode_prompt(p) for p in prompts]), 10, jax.random.PRNGKey(0),
                          temperature=0.0)
    np.testing.assert_array_equal(ref_eng.generate_ids(prompts, 10), np.asarray(old))
    tokens, lengths = ref_eng._pad(prompts)
    t = tokens.shape[1]
    valid = jnp.arange(t)[None] >= (t - lengths)[:, None]
    logits = {}
    for impl in ("reference", "pallas"):
        eng = ref_eng if impl == "reference" else Engine(model, dtype="float32", quant=method, quant_impl=impl,
                                                          prompt_bucket=8)
        run = jax.jit(lambda w, e=eng: forward(nnx.merge(e.graphdef, w), tokens, init_state(e.cfg, lengths - t),
                                               valid)[0])
        logits[impl] = np.asarray(run(eng.weights))
    np.testing.assert_allclose(logits["pallas"], logits["reference"], rtol=2e-4, atol=2e-4)


def test_retention_step_equals_recurrent_form():
    rng = jax.random.split(jax.random.PRNGKey(0), 4)
    b, h, dk, dv = 3, 2, 8, 16
    q, k = (jax.random.normal(r, (b, h, 1, dk)) for r in rng[:2])
    v = jax.random.normal(rng[2], (b, h, 1, dv))
    gam = ret.default_gammas(h)
    st = ret.RetentionState(jax.random.normal(rng[3], (b, h, dk, dv)), jnp.ones((b, h, dk)), jnp.int32(5))
    want, ws = jax.jit(ret.retention, static_argnames="mode")(q, k, v, gam, mode="recurrent", state=st)
    got, gs = jax.jit(ret.retention_step)(q[:, :, 0], k[:, :, 0], v[:, :, 0], gam,
                                          st._replace(offset=jnp.full((b,), 5)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want[:, :, 0]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gs.kv), np.asarray(ws.kv), rtol=1e-6, atol=1e-6)


def test_errors_name_the_fix(model, engine):
    with pytest.raises(EngineError, match="dtype"):
        Engine(model, dtype="float16")
    with pytest.raises(EngineError, match="decode_impl"):
        Engine(model, decode_impl="cuda")
    with pytest.raises(EngineError, match="batch=0"):  # on every backend, not only where the table is read
        Engine(model, quant="int8", batch=0)
    with pytest.raises(EngineError, match="temperature >= 0"):
        engine.generate_ids([b"x"], 4, temperature=-1.0)
    with pytest.raises(EngineError, match="max_new"):
        engine.generate_ids([b"x"], -1)


def test_engine_calls_do_not_hash_the_graphdef_again(engine, monkeypatch):
    """jit hashes its static arguments on every call; the engine passes jit_args.Prepared (hashed once), not
    the GraphDef that flax hashes by walking its whole tree."""
    from flax.nnx import graphlib

    slots = engine.prefill([b"abc"], Settings.make(1))
    engine.decode_device(slots, 2)  # compiled before counting
    calls = [0]
    original = graphlib.GraphDef.__hash__

    def counting(self):
        calls[0] += 1
        return original(self)

    monkeypatch.setattr(graphlib.GraphDef, "__hash__", counting)
    for _ in range(3):
        slots = engine.prefill([b"abc"], Settings.make(1))
        slots, _ = engine.decode_device(slots, 2)
    assert calls[0] == 0


def test_a_deleted_engine_frees_its_weights(model):
    """jit keeps its static arguments in its cache: the Prepared model the stages take must hold no arrays, or a
    deleted engine's weights stay on the device (bench.generate builds one engine per quant, kernel and batch)."""
    import gc
    import weakref

    eng = Engine(model, dtype="bfloat16", prompt_bucket=8)  # bf16: its own copies, not the model's float32 arrays
    slots, _ = eng.decode_device(eng.prefill([b"abc"], Settings.make(1)), 2)
    jax.block_until_ready(slots)
    ref = weakref.ref(jax.tree.leaves(eng.weights)[0])
    del eng, slots
    gc.collect()
    assert ref() is None
