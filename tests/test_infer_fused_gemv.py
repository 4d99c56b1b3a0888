"""The GEMV decode step (decode_impl="fused_gemv": pallas_kernels/decode_gemv.py around the fused mixer kernel)
computes the module-by-module recurrent step. Each GEMV kernel equals its jnp reference in interpret mode
(B = 1, odd B, B >= 16 on the tensor-core form; K and N not multiples of the blocks; RMSNorm prologue, silu * up
and residual epilogues) and lowers to Triton for CUDA at the 125M shapes; the step's float32 logits and states
equal the recurrent step and the 'xla' fused step over several steps of a left-padded batch; greedy engine
bytes equal the jnp engine's; the step lowered for CUDA is 5 Triton kernels per layer plus the head's, with no
XLA dot left."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export

from hqf_jax.infer import Engine, Settings
from hqf_jax.infer.engine import _decode
from hqf_jax.infer.step import forward
from hqf_jax.infer.fused import fused_step
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM
from pallas_kernels.decode_gemv import GemvBlocks, decode_gemv, pick_blocks, reference

TRITON = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]


def operands(b, k, n, mode, dtype=jnp.float32, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.normal(ks[0], (b, k)).astype(dtype)
    w = (jax.random.normal(ks[1], (k, 2 * n if "glu" in mode else n)) * k**-0.5).astype(dtype)
    s = (1 + 0.3 * jax.random.normal(ks[2], (k,))).astype(dtype) if "norm" in mode else None
    r = jax.random.normal(ks[3], (b, n)).astype(dtype) if "res" in mode else None
    return x, w, s, r


@pytest.mark.parametrize("b, k, n, mode, blocks", [
    (1, 40, 70, "norm", None),                      # B = 1, K and N ragged against every block
    (3, 72, 100, "norm", GemvBlocks(3, 16, 32)),    # odd B, several K steps, ragged last N tile
    (1, 100, 48, "res", GemvBlocks(1, 32, 16)),
    (5, 72, 40, "norm_glu", GemvBlocks(5, 32, 16)),  # matching gate / up tiles, ragged F
    (20, 72, 50, "norm", None),                     # tensor-core form, rows masked (block 32)
    (20, 100, 40, "norm_glu", GemvBlocks(16, 32, 16)),  # two row tiles
    (17, 40, 24, "res", None),
    (2, 64, 32, "norm_glu", GemvBlocks(2, 32, 16)),  # no ragged edge: unmasked loads
    (32, 64, 32, "norm", GemvBlocks(16, 32, 16)),
])
def test_gemv_kernel_equals_reference(b, k, n, mode, blocks):
    x, w, s, r = operands(b, k, n, mode)
    glu = "glu" in mode
    got = decode_gemv(x, w, s, r, eps=1e-5, glu=glu, blocks=blocks, interpret=True)
    want = reference(x, w, s, 1e-5, r, glu)
    assert got.shape == want.shape == (b, n)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_gemv_kernel_bf16_weights_float32_logits():
    x, w, s, _ = operands(2, 64, 259, "norm", jnp.bfloat16)
    got = decode_gemv(x, w, s, eps=1e-6, out_dtype=jnp.float32, interpret=True)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(reference(x, w, s, 1e-6, out_dtype=jnp.float32)),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("b, shapes", [(1, "125m"), (8, "125m"), (64, "125m"), (1, "1b"), (24, "1b")])
def test_gemv_kernels_lower_to_triton_at_125m_and_1b_shapes(b, shapes):
    d, v, f = {"125m": (768, 1536, 2560), "1b": (2048, 4096, 5632)}[shapes]  # configs/lm_125m.py, lm_1b.py
    qkvg, vocab = 2 * d + 2 * v, 259
    sd = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16)
    cases = [(sd(b, d), sd(d, qkvg), sd(d), None, {}), (sd(b, v), sd(v, d), None, sd(b, d), {}),
             (sd(b, d), sd(d, 2 * f), sd(d), None, {"glu": True}), (sd(b, f), sd(f, d), None, sd(b, d), {}),
             (sd(b, d), sd(d, vocab), sd(d), None, {"out_dtype": jnp.float32})]
    for x, w, s, r, kw in cases:
        fn = jax.jit(lambda x, w, s, r, kw=kw: decode_gemv(x, w, s, r, **kw))
        text = export.export(fn, platforms=["cuda"], disabled_checks=TRITON)(x, w, s, r).mlir_module()
        assert text.count("xla.gpu.triton") == 1, (b, w.shape)


def test_pick_blocks_are_powers_of_two():
    for b in (1, 2, 3, 7, 8, 15, 16, 24, 64):
        for k, n in ((768, 4608), (1536, 768), (2560, 768), (2048, 11264), (40, 70)):
            bl = pick_blocks(b, k, n, glu=n == 11264)
            assert all(x & (x - 1) == 0 for x in (bl.block_k, bl.block_n)), bl
            assert bl.block_b == b if b < 16 else bl.block_b & (bl.block_b - 1) == 0


def tiny(position="xpos", layers=2):
    cfg = RetNetConfig(d_model=48, num_layers=layers, num_heads=2, qk_dim=64, v_dim=64, ffn_dim=80, chunk_size=8,
                       position=position)
    return RetNetLM(cfg, nnx.Rngs(1))


def three_steps(eng):
    """Jitted (weights, fused weights, token (B,), state) -> (logits (B, V), state) of the recurrent step, the
    'xla' fused step and the gemv step (interpret mode)."""
    def make(fn):
        return jax.jit(lambda w, fw, t, s: fn(nnx.merge(eng.graphdef, w), fw, t, s))

    ref = make(lambda m, fw, t, s: (lambda o: (o[0][:, 0], o[1]))(forward(m, t[:, None], s)))
    xla = make(lambda m, fw, t, s: fused_step(m, fw, t, s, "xla"))
    gemv = make(lambda m, fw, t, s: fused_step(m, fw, t, s, "gemv", interpret=True))
    return [functools.partial(f, eng.weights, eng.fused_weights) for f in (ref, xla, gemv)]


# xPos only: the gemv step changes the projections, not the position tables or the mixer, whose RoPE and
# no-position cases tests/test_infer_fused.py checks
@pytest.mark.parametrize("position", ["xpos"])
def test_gemv_step_matches_recurrent_and_xla_step_float32(position):
    eng = Engine(tiny(position), dtype="float32", decode_impl="fused_gemv", prompt_bucket=8)
    slots = eng.prefill([b"hello world", b"ab", b"x"], Settings.make(3))
    ref_step, xla_step, gemv_step = three_steps(eng)
    s_ref = s_xla = s_new = slots.state
    token = jnp.asarray([7, 200, 33], jnp.int32)
    for _ in range(3):
        ref, s_ref = ref_step(token, s_ref)
        xla, s_xla = xla_step(token, s_xla)
        got, s_new = gemv_step(token, s_new)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(np.asarray(got), np.asarray(xla), rtol=2e-4, atol=2e-4)
        for a, b in zip(s_new, s_ref):
            np.testing.assert_allclose(np.asarray(a.kv), np.asarray(b.kv), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(np.asarray(a.ksum), np.asarray(b.ksum), rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(np.asarray(a.offset), np.asarray(b.offset))
        token = jnp.argmax(ref[:, :256], -1).astype(jnp.int32)


def test_gemv_step_bf16_as_close_to_the_recurrent_step_as_the_xla_step():
    eng = Engine(tiny(), dtype="bfloat16", decode_impl="fused_gemv", prompt_bucket=8)
    slots = eng.prefill([b"hello world", b"ab"], Settings.make(2))
    token = jnp.asarray([7, 200], jnp.int32)
    (ref, _), (xla, _), (got, state) = (f(token, slots.state) for f in three_steps(eng))
    assert got.dtype == jnp.float32 and state[0].kv.dtype == jnp.float32
    err, err_xla = float(jnp.abs(got - ref).max()), float(jnp.abs(xla - ref).max())
    assert err < max(2 * err_xla, 0.02) and err < 0.02 * float(jnp.abs(ref).max()) + 0.05, (err, err_xla)


def test_gemv_engine_greedy_bytes_equal():
    model = tiny()
    prompts = [b"def f(x):", b"import"]
    want = Engine(model, dtype="float32", prompt_bucket=8).generate_ids(prompts, 10)
    got = Engine(model, dtype="float32", prompt_bucket=8, decode_impl="fused_gemv").generate_ids(prompts, 10)
    np.testing.assert_array_equal(got, want)


def test_gemv_engine_refuses_quantized():
    with pytest.raises(ValueError, match="fused_gemv runs bf16/float32"):
        Engine(tiny(), quant="int8", decode_impl="fused_gemv")


def _calls(jaxpr, out: list) -> list:
    """Pallas kernel names and 'dot' for each XLA dot_general, in call order (jit-wrapped functions counted at
    every call; kernel bodies not entered)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            out.append(str(eqn.params.get("name", eqn.params.get("name_and_src_info"))).split()[0])
        elif eqn.primitive.name == "dot_general":
            out.append("dot")
        else:
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                _calls(sub, out)
    return out


def step_calls(decode_impl: str, layers: int) -> list[str]:
    """What the bf16 decode loop of ``decode_impl`` launches per step besides elementwise work; the loop is also
    exported for CUDA (Triton lowering of every kernel in place)."""
    eng = Engine(tiny(layers=layers), dtype="bfloat16", decode_impl=decode_impl)
    slots = eng.prefill([b"ab"], Settings.make(1))
    fn = jax.jit(lambda w, fw, s: _decode(eng.graphdef, w, fw, s, 2, eng.vocab_limit, decode_impl, False, 1))
    export.export(fn, platforms=["cuda"], disabled_checks=TRITON)(eng.weights, eng.fused_weights, slots)
    return _calls(_loop_body(jax.make_jaxpr(fn)(eng.weights, eng.fused_weights, slots).jaxpr), [])


def _loop_body(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("while", "scan"):  # fori_loop with a static trip count is a scan
            return eqn.params["body_jaxpr" if eqn.primitive.name == "while" else "jaxpr"].jaxpr
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            if (body := _loop_body(sub)) is not None:
                return body
    return None


def test_gemv_step_is_five_kernels_per_layer_and_no_xla_dot():
    layers = 3
    calls = step_calls("fused_gemv", layers)
    per_layer = ["decode_gemv_norm", "retention_decode_fused", "decode_gemv_res", "decode_gemv_norm_glu",
                 "decode_gemv_res"]
    assert calls == per_layer * layers + ["decode_gemv_norm"], calls
    before = step_calls("fused_pallas", layers)
    assert before.count("retention_decode_fused") == layers and before.count("dot") == 4 * layers + 1, before


@pytest.mark.gpu
@pytest.mark.parametrize("b, k, n, mode", [(1, 768, 3072, "norm"), (8, 1536, 768, "res"), (1, 768, 2560, "norm_glu"),
                                           (8, 768, 2560, "norm_glu"), (64, 768, 3072, "norm"), (64, 2560, 768, "res"),
                                           (5, 2048, 256, "norm")])
def test_gemv_kernels_on_gpu(b, k, n, mode):
    """The compiled Triton kernels (not interpret mode) at the 125M shapes, bf16 operands, against the float32
    reference of the same bf16 numbers: within bf16 rounding of the output."""
    x, w, s, r = operands(b, k, n, mode, jnp.bfloat16)  # the gpu marker: conftest skips it off a GPU
    got = decode_gemv(x, w, s, r, eps=1e-5, glu="glu" in mode, out_dtype=jnp.float32)
    want = reference(x, w, s, 1e-5, r, "glu" in mode, out_dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("mode", ["norm", "res", "norm_glu"])
def test_probe_xla_form_is_the_kernels_work(mode):
    """bench.decode_gemv_probe times each kernel against xla_form: the same work (bf16 rounding apart)."""
    from bench.decode_gemv_probe import xla_form

    x, w, s, r = operands(3, 64, 96, mode, jnp.bfloat16)
    got = xla_form(x, w, s, r, "glu" in mode).astype(jnp.float32)
    want = reference(x, w, s, 1e-6, r, "glu" in mode, out_dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-2, atol=2e-2)
