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


def tiny(qk=64, v=64, heads=0):
    cfg = RetNetConfig(d_model=64, num_layers=2, num_heads=2, qk_dim=qk, v_dim=v, ffn_dim=128, chunk_size=8,
                       extra_heads=heads)
    m = RetNetLM(cfg, nnx.Rngs(1))
    m.head.kernel.set_value(m.head.kernel.get_value() * 4.0)  # peaked laws; heads that copy the main head draft
    for h in getattr(m, "extra_heads", None) or ():  # sometimes right, sometimes wrong
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


def test_speculative_verify_runs_on_the_fused_quantized_weights():
    """The verify pass reads a fused engine's weights (step.forward(fw=...)): quantized, greedy speculation still
    gives the quantized engine's greedy bytes."""
    from hqf_jax.infer.speculative import speculative_generate

    model = tiny(heads=2)
    want = Engine(model, dtype="float32", prompt_bucket=16, quant="int4").generate_ids(PROMPTS, 12)
    fused = Engine(model, dtype="float32", prompt_bucket=16, quant="int4", decode_impl="fused")
    ids, stats = speculative_generate(fused, PROMPTS, 12)
    np.testing.assert_array_equal(ids, want)
