"""Parity of the JAX HF decoder with transformers' PyTorch models on tiny random checkpoints (float32)."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
import transformers
from transformers import LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

from hqf_jax.nn.hf_decoder import DecoderConfig, HFConfigError
from hqf_jax.nn.hf_loading import CheckpointError, checkpoint_sha256, load_hf_decoder, safetensors_files
from hqf_jax.ops import rope as rope_ops

V, D, F, L = 96, 64, 128, 2
TOL = 1e-4
COMMON = dict(
    vocab_size=V,
    hidden_size=D,
    intermediate_size=F,
    num_hidden_layers=L,
    initializer_range=0.15,  # large enough that attention is far from uniform and RoPE choices matter
    attn_implementation="eager",
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def _save(model_cls, config, folder, **save_kw):
    torch.manual_seed(0)
    model = model_cls(config).eval()
    model.save_pretrained(str(folder), **save_kw)
    return model


forward = nnx.jit(lambda m, x: m(x))  # one compile per model and shape, not one per primitive (eager)


def _compare(model, folder, lengths, seed=0):
    jm = load_hf_decoder(str(folder), progress=False)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for t in lengths:
        ids = rng.integers(0, V, size=(2, t)).astype(np.int64)
        with torch.no_grad():
            ref = model(torch.from_numpy(ids)).logits.numpy()
        out = np.asarray(forward(jm, jnp.asarray(ids, jnp.int32)))
        assert out.shape == ref.shape
        diff = float(np.abs(out - ref).max())
        assert diff < TOL, (t, diff)
        assert float(np.abs(ref).max()) > 0.1  # logits are not trivially tiny
        worst = max(worst, diff)
    return jm, worst


def _phi3_config(tie=False):
    hd = D // 4
    return Phi3Config(
        **COMMON,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        max_position_embeddings=64,
        original_max_position_embeddings=16,
        rope_scaling={
            "type": "longrope",
            "short_factor": [1.0 + 0.1 * i for i in range(hd // 2)],
            "long_factor": [1.0 + 0.7 * i for i in range(hd // 2)],
        },
        tie_word_embeddings=tie,
    )


def test_phi3_longrope_short_and_long(tmp_path):
    model = _save(transformers.Phi3ForCausalLM, _phi3_config(), tmp_path / "phi3")
    # 12 <= original_max_position_embeddings (short factors); 24 > 16 (long factors, as transformers does)
    jm, _ = _compare(model, tmp_path / "phi3", lengths=(12, 24))
    assert jm.cfg.fused and jm.cfg.rope["rope_type"] == "longrope"
    # sensitivity: the same weights with long factors replaced by short ones no longer match past 16 positions
    other = tmp_path / "phi3_short_only"
    shutil.copytree(tmp_path / "phi3", other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["rope_parameters"]["long_factor"] = cfg["rope_parameters"]["short_factor"]
    (other / "config.json").write_text(json.dumps(cfg))
    ids = np.arange(24, dtype=np.int32)[None] % V
    with torch.no_grad():
        ref = model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    wrong = np.asarray(forward(load_hf_decoder(str(other), progress=False), jnp.asarray(ids)))
    assert np.abs(wrong - ref).max() > 100 * TOL


def test_phi3_legacy_su_config_is_longrope():
    hf = _phi3_config().to_dict()
    hf.pop("rope_parameters")
    hf["rope_theta"] = 10000.0
    hf["rope_scaling"] = {"type": "su", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}
    cfg = DecoderConfig.from_hf(hf)
    assert cfg.rope["rope_type"] == "longrope" and cfg.rope["original_max_position_embeddings"] == 16


def test_llama_llama3_rope_bias_gqa_head_dim_tied(tmp_path):
    config = LlamaConfig(
        **COMMON,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,  # head_dim * heads != hidden
        attention_bias=True,
        mlp_bias=True,
        max_position_embeddings=64,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        tie_word_embeddings=True,
    )
    model = _save(transformers.LlamaForCausalLM, config, tmp_path / "llama")
    jm, _ = _compare(model, tmp_path / "llama", lengths=(20,))
    assert jm.lm_head is None and jm.cfg.tie_word_embeddings


@pytest.mark.parametrize("scaling", [{"rope_type": "linear", "factor": 2.0}, {"rope_type": "dynamic", "factor": 2.0}])
def test_llama_linear_dynamic_rope(tmp_path, scaling):
    config = LlamaConfig(
        **COMMON, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=16, rope_scaling=scaling
    )
    model = _save(transformers.LlamaForCausalLM, config, tmp_path / "llama")
    _compare(model, tmp_path / "llama", lengths=(24,))  # past max_position_embeddings: dynamic NTK rescales


def test_qwen2_biases_sliding_layer(tmp_path):
    config = Qwen2Config(
        **COMMON,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        use_sliding_window=True,
        sliding_window=6,
        max_window_layers=1,  # layer 1 slides, layer 0 is full
        tie_word_embeddings=False,
    )
    model = _save(transformers.Qwen2ForCausalLM, config, tmp_path / "qwen2")
    jm, _ = _compare(model, tmp_path / "qwen2", lengths=(16,))
    assert jm.cfg.qkv_bias and not jm.cfg.o_bias and jm.cfg.sliding_windows == (None, 6)


def test_mistral_sliding_window_sharded(tmp_path):
    config = MistralConfig(
        **COMMON, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, sliding_window=5
    )
    model = _save(transformers.MistralForCausalLM, config, tmp_path / "mistral", max_shard_size="60KB")
    assert len(safetensors_files(str(tmp_path / "mistral"))) > 1  # several shards, read one tensor at a time
    _compare(model, tmp_path / "mistral", lengths=(14,))  # window 5 < 14: the band mask matters


def test_bf16_load_casts_every_weight(tmp_path):
    model = _save(transformers.Phi3ForCausalLM, _phi3_config(tie=True), tmp_path / "phi3")
    jm = load_hf_decoder(str(tmp_path / "phi3"), dtype="bfloat16", progress=False)
    dtypes = {v.get_value().dtype for _, v in nnx.to_flat_state(nnx.state(jm, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
    ids = np.arange(12, dtype=np.int64)[None] % V
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    out = np.asarray(forward(jm, jnp.asarray(ids, jnp.int32)))
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


def test_pickle_only_folder_is_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(_phi3_config().to_dict()))
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safe_serialization=True") as err:
        load_hf_decoder(str(folder), progress=False)
    assert "\n" not in str(err.value)


def test_unsupported_family_and_hash(tmp_path):
    with pytest.raises(HFConfigError, match="valid: phi3"):
        DecoderConfig.from_hf({"model_type": "gpt2"})
    _save(transformers.Phi3ForCausalLM, _phi3_config(), tmp_path / "a")
    h = checkpoint_sha256(str(tmp_path / "a"))
    assert len(h) == 64 and h == checkpoint_sha256(str(tmp_path / "a"))


@pytest.mark.parametrize(
    "rope,seq_len",
    [
        ({"rope_type": "default"}, 8),
        ({"rope_type": "linear", "factor": 4.0}, 8),
        ({"rope_type": "dynamic", "factor": 4.0}, 100),
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}, 8),
        (
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 16},
            8,
        ),
    ],
)
def test_rope_frequencies_match_transformers(rope, seq_len):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(**{**COMMON, "attn_implementation": None}, num_attention_heads=2, max_position_embeddings=32,
                         rope_scaling=dict(rope))
    hf = config.to_dict()
    ours, scale = rope_ops.rope_frequencies(DecoderConfig.from_hf(hf).rope, 32, seq_len, 32)
    if rope["rope_type"] == "default":
        ref = 1.0 / (10000.0 ** (torch.arange(0, 32, 2).float() / 32))
        ref_scale = 1.0
    else:
        ref, ref_scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config, None, seq_len=seq_len)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=2e-6)
    assert scale == pytest.approx(ref_scale)


def test_apply_rope_partial_keeps_tail():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 2, 5, 8)), jnp.float32)
    inv = np.array([1.0, 0.5], np.float32)  # rotary dim 4 of 8
    cos, sin = rope_ops.rope_cos_sin(jnp.arange(5), inv)
    y = rope_ops.apply_rope(x, cos, sin)
    np.testing.assert_array_equal(y[..., 4:], x[..., 4:])
    # rotation preserves the norm of each rotated pair
    np.testing.assert_allclose(
        np.linalg.norm(y[..., :4], axis=-1), np.linalg.norm(x[..., :4], axis=-1), rtol=1e-5
    )


def test_kv_cache_decode_matches_full_forward(tmp_path):
    model = _save(transformers.MistralForCausalLM, MistralConfig(
        **COMMON, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, sliding_window=5),
        tmp_path / "m")
    jm = load_hf_decoder(str(tmp_path / "m"), progress=False)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, V, (2, 10)), jnp.int32)
    full = forward(jm, ids)
    decode = nnx.jit(lambda m, x, c: m.decode(x, c))  # one compile per shape, not one per primitive (eager)
    logits, cache = decode(jm, ids[:, :6], jm.init_cache(2, 16))  # prefill
    steps = [logits]
    for i in range(6, 10):
        lg, cache = decode(jm, ids[:, i:i + 1], cache)
        steps.append(lg)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)
    assert int(cache.length) == 10
    with torch.no_grad():
        ref = model(torch.from_numpy(np.asarray(ids, np.int64))).logits.numpy()
    assert np.abs(np.asarray(full) - ref).max() < TOL


def test_gqa_decode_step_never_repeats_the_cache(tmp_path):
    """A grouped-query decode step reads the KV cache at its own head count: no value in the step's program has
    the shape of the cache repeated to every query head (B, H, S, hd). The repeat made a TinyLlama-shaped decoder's
    batch-256 KV-cache step read 8x its cache (docs/BENCHMARKS.md, stop 32)."""
    import jax

    _save(transformers.MistralForCausalLM, MistralConfig(
        **COMMON, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64), tmp_path / "m")
    jm = load_hf_decoder(str(tmp_path / "m"), progress=False)
    cache = jm.init_cache(3, 16)
    gd, st = nnx.split(jm)
    jaxpr = jax.make_jaxpr(lambda st, x, c: nnx.merge(gd, st).decode(x, c))(st, jnp.ones((3, 1), jnp.int32), cache)
    hd = jm.cfg.head_dim
    shapes = {tuple(v.aval.shape) for e in jaxpr.jaxpr.eqns for v in e.outvars}
    assert (3, 2, 16, hd) in shapes and (3, 4, 16, hd) not in shapes
