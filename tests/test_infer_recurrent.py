"""RetNPhi generation through the engine (hqf_jax.infer.recurrent): at temperature 0 it gives the same bytes
as the old path (nn.generate.sample and nn.generate.stream, the model's own scan of model.step); a row's
sampled bytes do not depend on the rows it is batched with; ragged prompts are refused."""

import jax
import numpy as np
import pytest
from flax import nnx

from hqf_jax.infer import EngineError
from hqf_jax.infer.recurrent import RecurrentEngine
from hqf_jax.nn import generate
from hqf_jax.nn.hf_decoder import DecoderConfig, HFDecoderLM
from hqf_jax.nn.retnphi import RetNPhi, RetNPhiConfig


def _retnphi(hidden=32, inter=64):
    hf = dict(model_type="llama", vocab_size=60, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0,
              rms_norm_eps=1e-5)
    dec = HFDecoderLM(DecoderConfig.from_hf(hf), rngs=nnx.Rngs(0))
    return RetNPhi.from_decoder(dec, RetNPhiConfig(byte_init="random", chunk_size=4))


@pytest.fixture(scope="module")
def model():
    return _retnphi()


def test_greedy_bytes_equal_old_path(model):
    prompts = [b"def f(x):", b"import os"]
    eng = RecurrentEngine(model, dtype=None)
    got = eng.generate_ids(prompts, 16)
    old = generate.sample(model, np.stack([generate.encode_prompt(p) for p in prompts]), 16, jax.random.PRNGKey(0),
                          temperature=0.0)
    np.testing.assert_array_equal(got, np.asarray(old))
    one = list(generate.stream(model, prompts[0], 16, temperature=0.0, stop_at_eos=False))
    assert list(eng.stream(prompts[0], 16, temperature=0.0, chunk=5)) == one


def test_rows_independent_and_ragged_refused(model):
    eng = RecurrentEngine(model, dtype=None)
    both = eng.generate_ids([b"abc", b"xyz"], 12, seed=[5, 9], temperature=1.0)
    alone = eng.generate_ids([b"xyz"], 12, seed=[9], temperature=1.0)
    np.testing.assert_array_equal(both[1], alone[0])
    with pytest.raises(EngineError, match="one length"):
        eng.prefill([b"a", b"bc"])
    padded = RecurrentEngine(model, dtype=None, min_rows=4)  # the batch padded with copies of row 0: same bytes
    np.testing.assert_array_equal(padded.generate_ids([b"xyz"], 12, seed=[9], temperature=1.0), alone)
    with pytest.raises(EngineError, match="min_rows"):
        RecurrentEngine(model, dtype=None, min_rows=0)


def test_quantized_engine_equals_the_quantized_model():
    """quant="int4": the engine's greedy bytes are those of the same model quantized by quantize_model and sampled
    by the old path; the caller's model keeps its float layers."""
    from hqf_jax.quant.model import QuantLinear, quantize_model

    from hqf_jax.nn.lora import LoRAConfig, LoRALinear, apply_lora, merge

    model = _retnphi(64, 128)  # layers of >= 4096 weights: quantize_model's default bound
    apply_lora(model, LoRAConfig(rank=4), nnx.Rngs(3))  # adapters: the engine merges them before quantizing
    for _, node in nnx.iter_graph(model):  # non-zero adapters (B starts at zero), so that merging matters
        if isinstance(node, LoRALinear):
            node.lora_B.set_value(node.lora_B.get_value() + 0.05)
    eng = RecurrentEngine(model, dtype=None, quant="int4", quant_impl="reference")
    assert eng.quant_report and not any(isinstance(n, QuantLinear) for _, n in nnx.iter_graph(model))
    assert any(isinstance(n, LoRALinear) for _, n in nnx.iter_graph(model))  # the caller's model is untouched
    ref = nnx.merge(*nnx.split(model))
    with pytest.raises(Exception, match="merge the adapters first"):
        quantize_model(ref, "int4")
    merge(ref)
    ref, _ = quantize_model(ref, "int4", impl="reference")
    prompts = [b"def f(x):", b"import os"]
    old = generate.sample(ref, np.stack([generate.encode_prompt(p) for p in prompts]), 12, jax.random.PRNGKey(0),
                          temperature=0.0)
    np.testing.assert_array_equal(eng.generate_ids(prompts, 12), np.asarray(old))
