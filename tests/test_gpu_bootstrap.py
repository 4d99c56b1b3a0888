"""studies.gpu_bootstrap end to end at toy size on CPU: tokenizer + token pretraining + HF export, the project's
and the origin's recipes, scratch at equal compute (pretraining not counted / counted), report and plot."""

import json
import math
import shutil

import numpy as np
import pytest

from hqf_jax.data.sources import stdlib_root
from hqf_jax.ops.constants import BYTE_VOCAB_SIZE
from hqf_jax.trainer import lm_task

TINY_TOKEN = ["token.tokenizer.vocab_size=300", "token.tokenizer.sample_bytes=20000", "token.model.hidden_size=32",
              "token.model.intermediate_size=64", "token.model.num_hidden_layers=2", "token.model.num_attention_heads=2",
              "token.model.num_key_value_heads=1", "token.data.seq_len=32", "token.data.batch_size=4",
              "token.train.warmup_steps=1", "token.train.eval_max_tokens=256"]


@pytest.mark.study
def test_gpu_bootstrap_runs_every_phase_with_equal_compute(tmp_path, monkeypatch):
    from studies import gpu_bootstrap
    from tests.helpers import ROOT

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HQF_DATA_STORE", str(tmp_path / "store"))
    data = tmp_path / "data"
    data.mkdir()
    for name in ("textwrap.py", "bisect.py", "heapq.py", "keyword.py", "colorsys.py", "glob.py"):
        shutil.copy(f"{stdlib_root()}/{name}", data / name)
    out = tmp_path / "study"
    report = gpu_bootstrap.main([
        "--token-config", "configs/token_lm_tiny.py", "--config", "configs/retnphi_tiny.py",
        "--origin-config", "configs/retnphi_origin_tiny.py", "--out", str(out), "--pretrain-mb", "0.1",
        "--valid-mb", "0.05", "--pretrain-steps", "5", "--arm-steps", "3", "--no-progress",
        "data.source=files", f"data.paths={data}", "data.valid_fraction=0.3", "data.max_files=0", "data.seq_len=32",
        "data.batch_size=4", "train.eval_max_bytes=512", "train.warmup_steps=1", "model.lora.rank=2",
        "model.retnphi.chunk_size=16", *TINY_TOKEN])

    pre, runs = report["pretrain"], report["runs"]
    hf = out / "token" / "hf"
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (hf / f).exists(), f
    assert pre["steps"] == 5 and pre["vocab"] == 300 and not pre["capped"]
    assert set(runs) == {"project", "origin", "scratch_a", "scratch_b"}
    arm = max(runs[n]["steps"] * runs[n]["flops_per_step"] for n in ("project", "origin"))
    for name, target in (("scratch_a", arm), ("scratch_b", arm + pre["train_flops"])):
        r = runs[name]  # the fewest whole steps that reach the target FLOPs
        assert r["steps"] == math.ceil(target / r["flops_per_step"]), name
        assert r["trainable"] == r["params"]
    for name, r in runs.items():
        assert r["curve"][0][0] == 0 and r["curve"][-1][0] == r["steps"], name
        assert all(np.isfinite(b) for _, b in r["curve"]), name

    # the origin recipe: DoRA r32->2 on o_proj (A, B, magnitude) + post-attention norms + both byte tables
    d, layers, rank = 32, 2, 2
    assert runs["origin"]["trainable"] == layers * (rank * (d + d) + d) + layers * d + 2 * BYTE_VOCAB_SIZE * d
    origin, cfg, _ = lm_task.load_run(out / "origin")
    assert cfg.model.base_quant.startswith("nf4")
    w = np.asarray(origin.layers[0].mlp.down_proj.weight.get_value())  # frozen base: NF4 values, 16 per group
    assert max(len(np.unique(g)) for g in w.reshape(-1, 16)) <= 16
    project, _, _ = lm_task.load_run(out / "project")
    wp = np.asarray(project.layers[0].mlp.down_proj.weight.get_value())
    assert min(len(np.unique(g)) for g in wp.reshape(-1, 16)) == 16 and not np.allclose(w, wp)  # project: unrounded

    table = (out / "table.md").read_text()
    assert all(f"| {n} |" in table for n in runs)
    assert json.loads((out / "results.json").read_text())["pretrain"]["steps"] == 5
    assert (out / "bpb_vs_flops.png").stat().st_size > 10_000



def test_sample_docs_spreads_over_the_split_in_order_and_reaches_the_budget():
    from hqf_jax.trainer.token_task import sample_docs

    docs = [(f"d{i:03d}", bytes(10 + i % 7)) for i in range(200)]
    picked = sample_docs(docs, 500)
    assert 500 <= sum(len(d) for _, d in picked) < 500 + 16  # stops at the first doc that reaches it (<= 16 bytes)
    assert picked == sorted(picked) and picked == sample_docs(docs, 500)  # original order, deterministic
    assert int(picked[-1][0][1:]) > 100  # not the first folder's files
    assert sample_docs(docs, 0) == docs


def test_budgets_and_curve_reading():
    from hqf_jax.trainer.bootstrap_runs import bpb_at_flops
    from hqf_jax.trainer.budget import budget_steps, steps_for_flops

    assert budget_steps(10.0, 1e12, 100.0) == 1000  # 10 s at 100 TFLOP/s, 1 TFLOP a step
    assert steps_for_flops(10.5e12, 1e12) == 11  # the fewest whole steps that reach the target
    curve = [(0, 8.0), (10, 4.0), (100, 2.0)]
    assert bpb_at_flops(curve, 1.0, 10.0) == 4.0 and bpb_at_flops(curve, 1.0, 100.0) == 2.0
    assert bpb_at_flops(curve, 1.0, math.sqrt(10 * 100)) == pytest.approx(3.0)  # linear in log FLOPs
    assert math.isnan(bpb_at_flops(curve, 1.0, 1000.0))
    assert bpb_at_flops(curve, 1.0, 5.0) == 8.0  # before the first eval (no log scale from 0): the step-0 value
