"""Phi-3.5-mini on paper: counts from the public config, adapter size, one-GPU memory plan."""

import json

import pytest

from studies import phi35_plan
from hqf_jax.nn.hf_decoder import DecoderConfig
from hqf_jax.nn.lora import LoRAConfig
from hqf_jax.ops import rope as rope_ops


@pytest.fixture(scope="module")
def plan():
    return phi35_plan.plan()


def test_fixture_is_phi35_mini_with_longrope():
    with open(phi35_plan.FIXTURE) as f:
        hf = json.load(f)
    cfg = DecoderConfig.from_hf(hf)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == (3072, 32, 32, 32)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.head_dim) == (8192, 32064, 96)
    assert cfg.rope["rope_type"] == "longrope" and cfg.rope["original_max_position_embeddings"] == 4096
    inv_short, scale = rope_ops.rope_frequencies(cfg.rope, 96, 4096, cfg.max_position_embeddings)
    inv_long, _ = rope_ops.rope_frequencies(cfg.rope, 96, 4097, cfg.max_position_embeddings)
    assert inv_short.shape == inv_long.shape == (48,) and (inv_long <= inv_short).all()
    # attention factor sqrt(1 + ln(131072/4096) / ln(4096)) = sqrt(1 + 5/12)
    assert scale == pytest.approx((1 + 5 / 12) ** 0.5)


def test_param_counts_match_hand_formula(plan):
    d, f, v, layers = 3072, 8192, 32064, 32
    per_layer = d * 3 * d + d * d + d * 2 * f + f * d + 2 * d
    assert plan.base_params == layers * per_layer + 2 * v * d + d == 3_821_079_552
    r = LoRAConfig().rank
    lora = layers * r * ((d + 3 * d) + (d + d) + (d + 2 * f) + (f + d))
    assert plan.lora_params == lora == 25_165_824
    assert plan.byte_table_params == 2 * 259 * d
    assert plan.norm_params == (2 * layers + 1) * d + layers * d  # RMSNorms + per-layer GroupNorm scale
    assert plan.trainable_params == lora + 2 * 259 * d + plan.norm_params
    assert plan.frozen_params == layers * per_layer - layers * 2 * d  # blocks minus their (trainable) norms


def test_adapter_size_and_memory_plan(plan):
    # tensor bytes plus a small header; bf16 about 50 MB as claimed, float32 twice that
    assert 4 * plan.trainable_params < plan.adapter_bytes_f32 < 4 * plan.trainable_params + 100_000
    assert 2 * plan.trainable_params < plan.adapter_bytes_bf16 < 2 * plan.trainable_params + 100_000
    assert 45e6 < plan.adapter_bytes_bf16 < 60e6
    mem = plan.memory
    assert mem["frozen_base_bf16"] == 2 * plan.frozen_params
    assert mem["trainable_state_f32_adam"] == 16 * plan.trainable_params
    assert mem["total"] == sum(v for k, v in mem.items() if k != "total")
    assert plan.fits and mem["total"] < 72e9 and plan.max_batch >= 16
    no_remat = phi35_plan.plan(batch=16, remat=False)
    assert no_remat.memory["activations"] > 5 * mem["activations"] and not no_remat.fits


def test_cli_prints_table_and_writes_its_folder(capsys, tmp_path):
    p = phi35_plan.main(["--rank", "8", "--batch", "4", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "adapter file  bfloat16" in out and "largest batch" in out
    assert "adapter file  bfloat16" in (tmp_path / "table.md").read_text()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["trainable_params"] == p.trainable_params and saved["fits"] == p.fits
