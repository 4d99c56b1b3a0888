"""HF loader against transformers where a loader error cannot hide (issue 19, item 7).

Random init leaves every bias at 0 and every norm weight at 1, so a loader that dropped biases or norms
would still match. Here every parameter of the torch model is perturbed before saving (1-D ones by
O(0.3)), activations are mapped by transformers' own names and checked against ACT2FN, and byte_init=tokens
refuses a folder without a usable tokenizer in one line.
"""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers import LlamaConfig, MistralConfig, Phi3Config, Qwen2Config
from transformers.activations import ACT2CLS, ACT2FN

from hqf_jax.nn.hf_decoder import ACTIVATIONS, DecoderConfig, HFConfigError
from hqf_jax.nn.hf_loading import load_hf_decoder
from hqf_jax.nn.retnphi import RetNPhi, RetNPhiConfig, RetNPhiConfigError

V, D, F, L = 96, 64, 128, 2
TOL = 1e-4
COMMON = dict(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L, initializer_range=0.1,
              attn_implementation="eager", pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=64)


def _save_perturbed(model_cls, config, folder, seed=0):
    """Every parameter moved off its init (biases off 0, norm weights off 1), then saved as safetensors."""
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 1 else 0.02))
    model.save_pretrained(str(folder))
    vectors = {n: p.detach().clone() for n, p in model.named_parameters() if p.ndim == 1}
    assert vectors and all(float(p.std()) > 0.15 for p in vectors.values())  # nothing left at 0 or 1
    return model, vectors


def _max_diff(model, jm, t=16, seed=0):
    ids = np.random.default_rng(seed).integers(0, V, size=(2, t)).astype(np.int64)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    out = np.asarray(jm(jnp.asarray(ids, jnp.int32)))
    assert out.shape == ref.shape and float(np.abs(ref).max()) > 0.1
    return float(np.abs(out - ref).max())


def _heads(**kw):
    return dict(num_attention_heads=4, num_key_value_heads=2, **kw)


CASES = {
    # llama: q/k/v/o and MLP biases, exact-erf gelu (transformers' "gelu")
    "llama_gelu_biases": (transformers.LlamaForCausalLM,
                          lambda: LlamaConfig(**COMMON, **_heads(), attention_bias=True, mlp_bias=True, hidden_act="gelu")),
    # qwen2: q/k/v biases (o_proj without), one sliding layer
    "qwen2": (transformers.Qwen2ForCausalLM,
              lambda: Qwen2Config(**COMMON, **_heads(), use_sliding_window=True, sliding_window=6, max_window_layers=1,
                                  tie_word_embeddings=False)),
    # phi3: fused qkv / gate_up, tanh gelu by its pytorch name
    "phi3_gelu_tanh": (transformers.Phi3ForCausalLM,
                       lambda: Phi3Config(**COMMON, **_heads(), hidden_act="gelu_pytorch_tanh", tie_word_embeddings=False)),
    "mistral_relu": (transformers.MistralForCausalLM,
                     lambda: MistralConfig(**COMMON, **_heads(), sliding_window=5, hidden_act="relu")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_perturbed_parity_with_transformers(case, tmp_path):
    model_cls, make = CASES[case]
    model, vectors = _save_perturbed(model_cls, make(), tmp_path / case)
    jm = load_hf_decoder(str(tmp_path / case), progress=False)
    assert _max_diff(model, jm) < TOL
    if case.startswith("qwen2"):
        assert jm.cfg.qkv_bias and not jm.cfg.o_bias
        assert any(n.endswith("q_proj.bias") for n in vectors)
    # sensitivity: the perturbed vectors matter; dropping one of them (a loader bug) is far outside TOL
    lin = jm.model.layers[0].post_attention_layernorm
    lin.weight.set_value(jnp.ones_like(lin.weight[...]))
    assert _max_diff(model, jm) > 100 * TOL


def test_biases_are_loaded_not_zero(tmp_path):
    model, vectors = _save_perturbed(transformers.Qwen2ForCausalLM, CASES["qwen2"][1](), tmp_path / "q")
    jm = load_hf_decoder(str(tmp_path / "q"), progress=False)
    attn = jm.model.layers[1].self_attn
    np.testing.assert_array_equal(np.asarray(attn.k_proj.bias[...]), vectors["model.layers.1.self_attn.k_proj.bias"].numpy())
    attn.k_proj.bias.set_value(jnp.zeros_like(attn.k_proj.bias[...]))
    assert _max_diff(model, jm) > 100 * TOL


def test_gelu_means_exact_erf(tmp_path):
    """transformers' "gelu" is erf; reading it as the tanh approximation (the old mapping) is a clear miss."""
    model, _ = _save_perturbed(transformers.LlamaForCausalLM, CASES["llama_gelu_biases"][1](), tmp_path / "g")
    assert _max_diff(model, load_hf_decoder(str(tmp_path / "g"), progress=False)) < TOL
    tanh = tmp_path / "g_as_tanh"
    shutil.copytree(tmp_path / "g", tanh)
    cfg = json.loads((tanh / "config.json").read_text())
    cfg["hidden_act"] = "gelu_new"
    (tanh / "config.json").write_text(json.dumps(cfg))
    assert _max_diff(model, load_hf_decoder(str(tanh), progress=False)) > 2 * TOL  # 4.4e-4 here


def test_every_activation_matches_act2fn():
    x = np.linspace(-12, 12, 4001).astype(np.float32)
    for name, fn in ACTIVATIONS.items():
        ref = ACT2FN[name](torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(np.asarray(fn(jnp.asarray(x))), ref, atol=3e-6, rtol=1e-6, err_msg=name)
    # exact and tanh gelu differ by ~5e-4 somewhere: far above that tolerance, so a swap cannot pass
    assert np.abs(np.asarray(ACTIVATIONS["gelu"](x)) - np.asarray(ACTIVATIONS["gelu_new"](x))).max() > 1e-4
    # everything transformers names is supported except the activations with learned parameters
    assert set(ACT2CLS) - set(ACTIVATIONS) <= {"prelu", "xielu"}
    assert set(ACTIVATIONS) <= set(ACT2CLS)


@pytest.mark.parametrize("act", ["prelu", "gelu_foo"])
def test_unknown_activation_names_the_supported_ones(act):
    hf = LlamaConfig(**COMMON, **_heads()).to_dict()
    hf["hidden_act"] = act
    with pytest.raises(HFConfigError) as err:
        DecoderConfig.from_hf(hf)
    msg = str(err.value)
    assert act in msg and "gelu_pytorch_tanh" in msg and "silu" in msg and "\n" not in msg


# ---------------------------------------------------------------------- byte_init=tokens needs a tokenizer


def _folder_without_tokenizer(tmp_path, family):
    cls, config = {"llama": (transformers.LlamaForCausalLM, LlamaConfig),
                   "qwen2": (transformers.Qwen2ForCausalLM, Qwen2Config)}[family]
    folder = tmp_path / family
    torch.manual_seed(0)
    cls(config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64)).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tokens_init_without_tokenizer_is_one_line(tmp_path, family):
    """llama: transformers raised a multi-line traceback; qwen2: it built an empty tokenizer of vocabulary 1
    and the "token" init was silently random."""
    folder = _folder_without_tokenizer(tmp_path, family)
    with pytest.raises(RetNPhiConfigError) as err:
        RetNPhi.from_pretrained(str(folder), RetNPhiConfig(byte_init="tokens"), progress=False)
    msg = str(err.value)
    assert "has none" in msg and "byte_init=random" in msg and "\n" not in msg
    RetNPhi.from_pretrained(str(folder), RetNPhiConfig(byte_init="random"), progress=False)  # the named fix works


def test_empty_tokenizer_is_refused(tmp_path):
    from tokenizers import Tokenizer, models

    folder = _folder_without_tokenizer(tmp_path, "qwen2")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), bos_token="<|bos|>")
    fast.save_pretrained(str(folder))  # a tokenizer.json whose only token is a special one
    with pytest.raises(RetNPhiConfigError) as err:
        RetNPhi.from_pretrained(str(folder), RetNPhiConfig(byte_init="tokens"), progress=False)
    assert "is empty" in str(err.value) and "\n" not in str(err.value)


def test_train_retnphi_reports_a_missing_tokenizer_as_config_error(tmp_path):
    from hqf_jax import cli
    from hqf_jax.errors import ConfigError
    from hqf_jax.trainer import retnphi_task
    from tests.helpers import ROOT

    folder = _folder_without_tokenizer(tmp_path, "llama")
    cfg = cli.load_config(str(ROOT / "configs/retnphi_tiny.py"), [f"model.checkpoint={folder}"])
    with pytest.raises(ConfigError, match="has none"):
        retnphi_task.build_model(cfg)
