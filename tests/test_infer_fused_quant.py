"""The fused decode step over quantized weights (fused.quantize_fused, fused.fdot): per-column codecs quantize a
concatenation exactly as its parts, so a fused quantized engine gives the module-by-module quantized engine's
greedy bytes, reads the same weight bytes, and goes through each kernel layout (reference and the Pallas form
in interpret mode); what it cannot take fails with a message."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hqf_jax.infer import Engine
from hqf_jax.infer.generator import EngineError
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM
from hqf_jax.quant.linear import dequantize_matrix
from hqf_jax.quant.qtensor import quantize

PROMPTS = [b"def f(x):", b"import"]


def tiny(qk=64, v=64, heads=0, sharp=4.0):
    cfg = RetNetConfig(d_model=64, num_layers=2, num_heads=2, qk_dim=qk, v_dim=v, ffn_dim=128, chunk_size=8,
                       extra_heads=heads)
    m = RetNetLM(cfg, nnx.Rngs(1))
    m.head.kernel.set_value(m.head.kernel.get_value() * sharp)  # sharp > 1: peaked laws
    for h in getattr(m, "extra_heads", None) or ():  # heads that copy the main head
        h.kernel.set_value(m.head.kernel.get_value())
    return m


@pytest.mark.parametrize("method", ["int8", "int4", "nf4", "phi5u8", "nf4dq"])
def test_a_concatenation_quantizes_as_its_parts(method):
    """Scales per column group: the joined matrix's codes are its parts' codes. NF4 with double quantization
    shares second-level blocks across columns, so there the joined matrix is quantized differently."""
    rng = np.random.default_rng(0)
    parts = [jnp.asarray(rng.standard_normal((128, n)).astype(np.float32) * s) for n, s in ((64, 0.1), (128, 1.0))]
    joined = dequantize_matrix(quantize(jnp.concatenate(parts, 1), method))
    apart = jnp.concatenate([dequantize_matrix(quantize(w, method)) for w in parts], 0)
    assert joined.shape == apart.shape == (192, 128)
    if method == "nf4dq":
        assert float(jnp.max(jnp.abs(joined - apart))) > 0
    else:
        np.testing.assert_array_equal(np.asarray(joined), np.asarray(apart))


@pytest.mark.parametrize("quant,quant_impl", [("int4", "reference"), ("int4", "pallas")])
def test_fused_quantized_engine_gives_the_module_engines_bytes(quant, quant_impl):
    model = tiny()
    plain = Engine(model, dtype="float32", prompt_bucket=8, quant=quant, quant_impl=quant_impl)
    want = plain.generate_ids(PROMPTS, 10)
    impls = ("fused", "fused_pallas") if quant_impl == "reference" else ("fused",)
    for impl in impls:
        eng = Engine(model, dtype="float32", prompt_bucket=8, quant=quant, quant_impl=quant_impl, decode_impl=impl)
        kind = type(eng.fused_weights["qkvg"][0]).__name__
        assert kind == ("QTensor" if quant_impl == "reference" else "PackedWeight"), kind
        np.testing.assert_array_equal(eng.generate_ids(PROMPTS, 10), want)
        assert eng.weight_bytes() == plain.weight_bytes()  # the same codes, read once a step


def test_what_the_fused_quantized_step_cannot_take():
    with pytest.raises(EngineError, match="joins quantized and unquantized layers"):  # q, k below min_size
        Engine(tiny(qk=32), dtype="float32", quant="int4", decode_impl="fused")
    with pytest.raises(EngineError, match="fused_gemv runs bf16/float32"):
        Engine(tiny(), dtype="float32", quant="int4", decode_impl="fused_gemv")
    with pytest.raises(EngineError, match="double quantization"):
        Engine(tiny(), dtype="float32", quant="nf4dq", decode_impl="fused")


@pytest.mark.parametrize("quant_impl", ["reference", "pallas"])
def test_speculative_verify_runs_on_the_fused_quantized_weights(quant_impl):
    """The verify pass reads a fused engine's weights (step.forward(fw=...)): quantized, speculation over them gives
    the bytes that speculation over the module-by-module quantized engine gives, greedy and sampled with one seed
    (broad laws there, so drafts get accepted). Against the plain engine's greedy bytes: with the reference layout
    only, since the Pallas form of a 3-position verify and of a 1-position step sum in other orders (a near tie
    then goes the other way; the module-by-module engine does the same)."""
    from hqf_jax.infer.speculative import speculative_generate

    kw = dict(dtype="float32", prompt_bucket=16, quant="int4", quant_impl=quant_impl)
    for model, settings in ((tiny(heads=2), {}), (tiny(heads=2, sharp=1.0), dict(temperature=1.0, seed=3))):
        got, stats = speculative_generate(Engine(model, decode_impl="fused", **kw), PROMPTS, 12, **settings)
        want, _ = speculative_generate(Engine(model, **kw), PROMPTS, 12, **settings)
        np.testing.assert_array_equal(got, want)
        if not settings and quant_impl == "reference":
            np.testing.assert_array_equal(got, Engine(model, **kw).generate_ids(PROMPTS, 12))
    assert stats["bytes_per_verify"] > 1.0  # drafts were accepted: the accepting branch ran on the fused weights


def test_fused_quantized_step_computes_the_module_steps_logits():
    """One decode step, float32: the fused step over the joined int4 matrices gives the module-by-module int4
    step's logits and state (the same codes; only the order of a few sums may differ)."""
    from hqf_jax.infer.fused import fused_step
    from hqf_jax.infer.step import forward, init_state

    mod = Engine(tiny(), dtype="float32", quant="int4")
    fus = Engine(tiny(), dtype="float32", quant="int4", decode_impl="fused")
    state = init_state(mod.model.cfg, jnp.asarray([3, 0], jnp.int32))
    token = jnp.asarray([104, 7], jnp.int32)
    want, want_state = forward(mod.model, token[:, None], state)
    got, got_state = fused_step(fus.model, fus.fused_weights, token, state)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want[:, 0]), rtol=1e-5, atol=1e-5)
    for a, b in zip(got_state, want_state):
        np.testing.assert_allclose(np.asarray(a.kv), np.asarray(b.kv), rtol=1e-5, atol=1e-5)
