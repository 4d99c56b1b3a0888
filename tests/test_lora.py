"""LoRA / DoRA: zero-init identity, export -> load bit-exact, frozen weights untouched by training, merge."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hqf_jax.nn.adapters_io import AdapterError, export_adapter, load_adapter, read_manifest
from hqf_jax.nn.hf_decoder import FAMILIES, DecoderConfig, HFConfigError, HFDecoderLM, Linear
from hqf_jax.nn.lora import (
    FAMILY_TARGETS,
    SPLIT_TARGETS,
    LoRAConfig,
    LoRAConfigError,
    LoRALinear,
    LoRAParam,
    TrainableFilter,
    apply_lora,
    count_params,
    frozen_filter,
    lora_paths,
    merge,
)

V = 50


def _cfg(family="phi3"):
    hf = dict(
        model_type=family,
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
    )
    return DecoderConfig.from_hf(hf)


def _model(family="phi3", seed=0):
    return HFDecoderLM(_cfg(family), rngs=nnx.Rngs(seed))


def _tokens(seed=0, b=2, t=9):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, size=(b, t)), jnp.int32)


def _perturb_adapters(model, seed=1):
    """Give the zero-initialised B (and everything trainable) random values, as after some training."""
    key = jax.random.key(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, LoRAParam)):
        key, sub = jax.random.split(key)
        var.set_value(var.get_value() + 0.1 * jax.random.normal(sub, var.get_value().shape, var.get_value().dtype))


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("family", ["phi3", "llama"])
def test_zero_init_leaves_logits_unchanged(dora, family):
    model = _model(family)
    toks = _tokens()
    before = model(toks)
    targets = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj") if family == "phi3" else ("q_proj", "v_proj", "down_proj")
    wrapped = apply_lora(model, LoRAConfig(targets=targets, rank=4, alpha=8, dora=dora), nnx.Rngs(1))
    assert len(wrapped) == len(targets) * 2
    after = model(toks)
    if dora:  # m / ||W|| is 1 up to rounding
        np.testing.assert_allclose(after, before, atol=1e-5)
    else:
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_targets_wrap_every_projection_of_each_family(family):
    """The default ("auto") wraps every Linear in the decoder blocks, whatever the family names them."""
    model = _model(family)
    blocks = {".".join(map(str, p)) for p, m in nnx.iter_modules(model) if isinstance(m, Linear) and "layers" in p}
    assert LoRAConfig().targets == ("auto",)
    wrapped = apply_lora(model, LoRAConfig(rank=2), nnx.Rngs(0))
    assert set(wrapped) == blocks and len(wrapped) == 2 * len(FAMILY_TARGETS[family])
    assert {w.rsplit(".", 1)[-1] for w in wrapped} == set(FAMILY_TARGETS[family])
    assert ("qkv_proj" in FAMILY_TARGETS[family]) == (family == "phi3")


def test_targets_matching_nothing_is_a_clear_error():
    with pytest.raises(LoRAConfigError, match="valid names"):
        apply_lora(_model(), LoRAConfig(targets=("q_proj",)), nnx.Rngs(0))  # phi3 has fused qkv_proj
    # Llama names on a Phi-3 model used to wrap o_proj and down_proj silently; now the misses are named, on one line
    model = _model("phi3")
    with pytest.raises(LoRAConfigError) as err:
        apply_lora(model, LoRAConfig(targets=SPLIT_TARGETS), nnx.Rngs(0))
    msg = str(err.value)
    assert "\n" not in msg and "['q_proj', 'k_proj', 'v_proj', 'gate_proj', 'up_proj']" in msg and "phi3" in msg
    assert "'qkv_proj'" in msg and "auto" in msg
    assert lora_paths(model) == []  # nothing half-applied
    with pytest.raises(LoRAConfigError, match="'qkv_proj'"):  # and the other way round
        apply_lora(_model("llama"), LoRAConfig(targets=("qkv_proj", "o_proj")), nnx.Rngs(0))
    with pytest.raises(LoRAConfigError, match="needs a decoder family"):  # auto on a model that names no family
        apply_lora(nnx.Sequential(Linear(4, 4, bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                                         rngs=nnx.Rngs(0))), LoRAConfig(), nnx.Rngs(0))
    model = _model("llama")
    apply_lora(model, LoRAConfig(targets=("o_proj",)), nnx.Rngs(0))
    with pytest.raises(LoRAConfigError, match="wrapped already"):
        apply_lora(model, LoRAConfig(targets=("o_proj",)), nnx.Rngs(0))
    with pytest.raises(LoRAConfigError, match="unknown lora keys"):
        LoRAConfig.from_dict({"rnak": 4})


def test_pattern_targets_select_layers():
    model = _model()
    wrapped = apply_lora(model, LoRAConfig(targets=("model.layers.1.*",), rank=2), nnx.Rngs(0))
    assert sorted(wrapped) == [
        "model.layers.1.mlp.down_proj",
        "model.layers.1.mlp.gate_up_proj",
        "model.layers.1.self_attn.o_proj",
        "model.layers.1.self_attn.qkv_proj",
    ]
    assert isinstance(model.model.layers[0].self_attn.qkv_proj, Linear)
    assert not isinstance(model.model.layers[0].self_attn.qkv_proj, LoRALinear)


def test_filter_selects_adapters_and_norms_only():
    model = _model()
    lcfg = LoRAConfig(rank=4)
    apply_lora(model, lcfg, nnx.Rngs(1))
    filt = TrainableFilter()
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, filt))}
    assert "model.layers.0.self_attn.qkv_proj.lora_A" in names
    assert "model.layers.1.input_layernorm.weight" in names and "model.norm.weight" in names
    assert not any(n.endswith("proj.weight") or "embed_tokens" in n or "lm_head" in n for n in names)
    # 4 targets x 2 layers x rank*(in+out) + norms
    d, f, qkv = 32, 64, (4 + 2 * 2) * 8
    per_layer = 4 * (d + qkv) + 4 * (32 + d) + 4 * (d + 2 * f) + 4 * (f + d)
    assert count_params(model, filt) == 2 * per_layer + 2 * 2 * d + d


@pytest.mark.parametrize("dora", [False, True])
def test_export_load_roundtrip_is_bit_exact(tmp_path, dora):
    lcfg = LoRAConfig(rank=4, alpha=8, dora=dora)
    model = _model(seed=0)
    apply_lora(model, lcfg, nnx.Rngs(1))
    _perturb_adapters(model)
    manifest = export_adapter(model, str(tmp_path / "ad"), lcfg, base_sha256="ab" * 32, config={"note": "t"})
    assert manifest["bytes"] > 0 and manifest["lora"]["rank"] == 4
    assert read_manifest(str(tmp_path / "ad"))["base_checkpoint_sha256"] == "ab" * 32

    fresh = _model(seed=0)  # same base weights, no adapter yet
    load_adapter(fresh, str(tmp_path / "ad"), base_sha256="ab" * 32)
    a = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    b = dict(nnx.to_flat_state(nnx.state(fresh, nnx.Param)))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k].get_value()), np.asarray(b[k].get_value()), err_msg=str(k))
    np.testing.assert_array_equal(model(_tokens()), fresh(_tokens()))
    with pytest.raises(AdapterError, match="matching base"):
        load_adapter(_model(seed=0), str(tmp_path / "ad"), base_sha256="cd" * 32)


@pytest.mark.parametrize("dora", [False, True])
def test_merge_equals_unmerged(dora):
    model = _model()
    apply_lora(model, LoRAConfig(rank=4, alpha=8, dora=dora), nnx.Rngs(1))
    _perturb_adapters(model)
    toks = _tokens()
    unmerged = model(toks)
    assert merge(model) == 8
    assert not any(isinstance(m, LoRALinear) for _, m in nnx.iter_modules(model))
    np.testing.assert_allclose(model(toks), unmerged, atol=2e-5, rtol=1e-5)
    assert float(jnp.abs(unmerged - _model()(toks)).max()) > 1e-3  # the adapter did change the function


def test_adapter_only_training_keeps_frozen_bit_identical():
    model = _model()
    apply_lora(model, LoRAConfig(rank=4, alpha=8, dora=True), nnx.Rngs(1))
    filt = TrainableFilter()
    frozen_before = {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, frozen_filter(filt)))}
    train_before = {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, filt))}
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=filt)

    # the optimizer state holds only trainable leaves: every array leaf's path ends with a trainable path
    opt_paths = [p for p, v in nnx.to_flat_state(nnx.state(opt, nnx.OptState)) if np.ndim(v.get_value()) > 0]
    train_keys = set(train_before)
    frozen_keys = set(frozen_before)
    assert len(opt_paths) == 2 * len(train_keys)  # adam mu and nu
    for p in opt_paths:
        assert any(tuple(p[-len(k):]) == k for k in train_keys), p
        assert not any(tuple(p[-len(k):]) == k for k in frozen_keys), p

    @nnx.jit
    def step(model, opt, toks):
        def loss_fn(m):
            logits = m(toks[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, filt))(model)
        opt.update(model, grads)
        return loss

    toks = _tokens(t=12)
    losses = [float(step(model, opt, toks)) for _ in range(4)]
    assert losses[-1] < losses[0]
    for k, v in nnx.to_flat_state(nnx.state(model, frozen_filter(filt))):
        np.testing.assert_array_equal(np.asarray(v.get_value()), frozen_before[k], err_msg=str(k))
    changed = [k for k, v in nnx.to_flat_state(nnx.state(model, filt)) if not np.array_equal(v.get_value(), train_before[k])]
    assert any(k[-1] == "lora_B" for k in changed) and any(k[-1] == "lora_A" for k in changed)


def test_dropout_only_in_train_mode():
    model = _model()
    apply_lora(model, LoRAConfig(rank=4, dropout=0.5), nnx.Rngs(1))
    _perturb_adapters(model)
    toks = _tokens()
    model.eval()
    a, b = model(toks), model(toks)
    np.testing.assert_array_equal(a, b)
    model.train()
    c = model(toks)
    assert float(jnp.abs(c - a).max()) > 1e-4


def test_family_from_architectures_when_model_type_is_missing():
    hf = dict(architectures=["Phi3ForCausalLM"], vocab_size=V, hidden_size=32, intermediate_size=64,
              num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    cfg = DecoderConfig.from_hf(hf)
    assert cfg.family == "phi3" and LoRAConfig().expand(cfg.family) == FAMILY_TARGETS["phi3"]
    wrapped = apply_lora(HFDecoderLM(cfg, rngs=nnx.Rngs(0)), LoRAConfig(rank=2), nnx.Rngs(0))
    assert sorted(w.rsplit(".", 1)[-1] for w in wrapped) == sorted(FAMILY_TARGETS["phi3"])
    with pytest.raises(HFConfigError, match="architectures"):
        DecoderConfig.from_hf({**hf, "architectures": ["GPT2LMHeadModel"]})
