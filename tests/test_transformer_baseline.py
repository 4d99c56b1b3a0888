"""The standard decoder baseline (hqf_jax.nn.transformer): the attention op equals its jnp reference,
the model is causal, matches the RetNet's parameter count, its FLOPs count agrees with XLA's, and it
trains through the shared trainer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hqf_jax import cli
from hqf_jax.errors import ConfigError
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM, count_params, resolve_form
from hqf_jax.nn.transformer import TransformerConfig, TransformerLM
from hqf_jax.ops import attention as attn
from hqf_jax.ops import retention as ret
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.loop import train
from tests.helpers import ROOT, tiny_config

SMALL = dict(d_model=32, num_layers=2, num_heads=2, qk_dim=32, v_dim=64, ffn_dim=64, chunk_size=4)


def _small(**kw):
    return TransformerLM(TransformerConfig.matching(RetNetConfig(**SMALL, **kw)), nnx.Rngs(0))


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_causal_attention_equals_the_jnp_reference(dtype, tol):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, (2, 19, 3, 16), dtype) for key in (kq, kk, kv))
    with jax.default_matmul_precision("highest"):
        got = attn.causal_attention(q, k, v, "xla").astype(jnp.float32)
        want = attn.causal_attention_reference(q, k, v).astype(jnp.float32)
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
    # position 0 sees only itself: its output is v[0]
    np.testing.assert_allclose(got[:, 0], v[:, 0].astype(jnp.float32), atol=tol, rtol=tol)


def test_impl_auto_resolves_to_xla_on_cpu_and_bad_values_name_the_choices():
    assert attn.resolve_impl("auto", jnp.bfloat16) == "xla"  # tests run on CPU
    assert attn.resolve_impl("cudnn", jnp.float32) == "cudnn"  # explicit values pass through
    assert resolve_form("auto") == "chunkwise" and resolve_form("pallas") == "pallas"
    with pytest.raises(ValueError, match="auto"):
        attn.resolve_impl("flash", jnp.float32)


def test_attention_layer_equals_a_plain_jnp_forward():
    model = _small()
    layer = model.blocks[0].attention
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 11, 32))
    w = {n: getattr(layer, n).kernel[...] for n in "qkvo"}
    with jax.default_matmul_precision("highest"):
        got = layer(x)
        heads = lambda y: y.reshape(2, 11, 2, 16).transpose(0, 2, 1, 3)  # (B, H, T, D)
        q, k, v = heads(x @ w["q"]), heads(x @ w["k"]), heads(x @ w["v"])
        q, k = ret.rotate_qk(q, k, jnp.arange(11), "rope", 10000.0)
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(16.0)
        s = jnp.where(np.tril(np.ones((11, 11), bool)), s, -np.inf)
        y = jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, -1), v)
        want = y.transpose(0, 2, 1, 3).reshape(2, 11, 32) @ w["o"]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_future_bytes_do_not_change_past_logits():
    model = _small()
    a = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 0, 256)
    b = a.at[:, 9:].set(jax.random.randint(jax.random.PRNGKey(3), (2, 7), 0, 256))
    la, lb = model(a), model(b)
    np.testing.assert_allclose(la[:, :9], lb[:, :9], atol=1e-6, rtol=1e-6)
    assert float(jnp.abs(la[:, 9:] - lb[:, 9:]).max()) > 1e-3  # and the changed bytes do change the rest
    with pytest.raises(ValueError, match="no KV cache"):
        model.init_state(2)


@pytest.mark.parametrize("config", ["configs/lm_tiny.py", "configs/lm.py", "configs/lm_125m.py"])
def test_parameters_match_the_retnet_of_the_same_config(config):
    mcfg = cli.load_config_file(str(ROOT / config)).model
    r, t = RetNetConfig.from_dict(mcfg), TransformerConfig.from_dict(mcfg)
    sizes = {"retnet": count_params(nnx.eval_shape(lambda: RetNetLM(r, nnx.Rngs(0)))),
             "transformer": count_params(nnx.eval_shape(lambda: TransformerLM(t, nnx.Rngs(0))))}
    assert abs(sizes["transformer"] / sizes["retnet"] - 1) < 0.01, sizes


def test_flops_per_byte_agree_with_xla_cost_analysis():
    """Forward FLOPs that XLA counts, x3, against model_flops_per_byte. The XLA attention computes every
    score (masked or not), so it is set beside the formula with the non-causal T keys per position."""
    t = 64
    model = _small()
    cfg = model.cfg
    fwd = jax.jit(lambda m, x: m(x)).lower(model, jnp.zeros((1, t), jnp.int32)).compile().cost_analysis()
    fwd = fwd[0] if isinstance(fwd, list) else fwd
    xla = 3 * fwd["flops"] / t
    causal = lm_task.model_flops_per_byte(cfg, t)
    full = causal + 6 * cfg.num_layers * (2 * t * cfg.d_model - attn.causal_attention_macs_per_position(t, cfg.d_model))
    assert abs(xla / full - 1) < 0.15, (xla, full)  # the rest: norms, softmax, silu (elementwise)
    assert causal < full


def test_unknown_arch_names_the_choices():
    cfg = tiny_config(**{"model.arch": "mamba"})
    with pytest.raises(ConfigError, match="retnet"):
        lm_task.build_model(cfg)


def test_transformer_trains_through_the_shared_trainer(tmp_path):
    """120 steps of a tiny transformer on 60 stdlib files: validation bpb (3.68 here; the RetNet of the
    same size 3.67) well below the ~5.0-bit order-0 entropy of such text, so it learnt context."""
    cfg = tiny_config(**{"model.arch": "transformer", "model.d_model": 48, "model.qk_dim": 48, "model.v_dim": 96,
                         "model.ffn_dim": 128, "data.max_files": 60, "data.seq_len": 64, "train.steps": 120,
                         "train.eval_every": 1000, "train.sample_every": 1000, "train.ckpt_every": 1000,
                         "train.eval_max_bytes": 8192})
    task, _ = lm_task.build_task(cfg)
    assert isinstance(task.model, TransformerLM) and task.sample_fn is None
    final = train(task, cfg.train, cfg.mesh, tmp_path, cli.config_to_json(cfg), progress=False)
    assert np.isfinite(final["valid_bpb"]) and final["valid_bpb"] < 4.2, final
    model, _, step = lm_task.load_run(tmp_path)  # the run folder rebuilds the transformer
    assert isinstance(model, TransformerLM) and step == 120


def test_125m_transformer_config_is_the_125m_retnet_size():
    cfg = cli.load_config_file(str(ROOT / "configs/lm_125m_transformer.py"))
    t = lm_task.model_config(cfg.model)
    assert isinstance(t, TransformerConfig) and t.d_model == 768 and t.num_layers == 12
    assert t.ffn_dim == 3584  # 2560 + (2*768 + 3*1536 + 1536/768 - 4*768)/3, rounded to 8


@pytest.mark.gpu
def test_cudnn_attention_equals_the_reference_and_auto_picks_it_on_gpu():
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, (2, 256, 4, 64), jnp.bfloat16) for key in (kq, kk, kv))
    assert attn.resolve_impl("auto", jnp.bfloat16) == "cudnn"
    assert attn.resolve_impl("auto", jnp.float32) == "xla"  # cuDNN flash attention takes 16-bit inputs only
    got = attn.causal_attention(q, k, v, "cudnn").astype(jnp.float32)
    want = attn.causal_attention_reference(q, k, v).astype(jnp.float32)
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=2e-2)
    if jax.device_count() == 1:
        assert resolve_form("auto") == "pallas"
