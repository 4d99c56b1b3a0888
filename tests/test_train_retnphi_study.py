"""studies.bootstrap end to end at toy size: four runs on the shared loop, equal-compute bookkeeping, PNG."""

import json
import math
import shutil

import numpy as np
import pytest
from flax import nnx

from hqf_jax.data.sources import stdlib_root
from hqf_jax.trainer import lm_task, token_task


@pytest.mark.study
def test_bootstrap_study_runs_all_methods_with_equal_compute_bookkeeping(tmp_path, monkeypatch):
    from studies import bootstrap as bootstrap_study
    from tests.helpers import ROOT

    monkeypatch.chdir(ROOT)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("textwrap.py", "bisect.py", "heapq.py", "keyword.py"):
        shutil.copy(f"{stdlib_root()}/{name}", data / name)
    tok = token_task.train_tokenizer([p.read_text() for p in data.iterdir()], 300, 2)
    hf_config = token_task.llama_config(dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
                                        tok)
    pretrain = 1.0e8  # ~2.4 steps of the toy model
    hf = token_task.save_hf(token_task.build_decoder(hf_config, seed=0), hf_config, tok, tmp_path / "tok" / "hf",
                            {"train_flops": pretrain, "steps": 7, "params": 1})
    out = tmp_path / "study"
    report = bootstrap_study.main([
        "--out", str(out), "--steps", "4", "--no-progress", f"model.checkpoint={hf}", "data.source=files",
        f"data.paths={data}", "data.valid_fraction=0.25", "data.seq_len=32", "data.batch_size=8",
        "train.eval_max_bytes=512", "train.warmup_steps=1", "model.retnphi.chunk_size=16"])
    runs = report["runs"]
    assert set(runs) == {"scratch", "lora", "full", "scratch_eq"}
    assert runs["scratch"]["params"] == runs["full"]["params"]  # same size (lora adds its adapters, below)
    assert runs["scratch"]["flops_per_step"] == runs["full"]["flops_per_step"]
    assert runs["scratch"]["trainable"] == runs["full"]["trainable"] > runs["lora"]["trainable"]
    assert runs["scratch_eq"]["steps"] == 4 + math.ceil(pretrain / runs["full"]["flops_per_step"])
    for name, r in runs.items():
        assert r["curve"][0][0] == 0 and r["curve"][-1][0] == r["steps"], name
        assert all(np.isfinite(b) for _, b in r["curve"])
    assert json.loads((out / "results.json").read_text())["steps"] == 4
    assert (out / "bootstrap_study.png").stat().st_size > 10_000

    # scratch starts from a random base of the same config.json; every run folder reloads for eval
    assert json.loads((out / "random_base" / "config.json").read_text()) == json.loads((hf / "config.json").read_text())
    model, cfg, step = lm_task.load_run(out / "scratch")
    assert cfg.model.checkpoint == str(out / "random_base") and step == 4
    lora, _, _ = lm_task.load_run(out / "lora")
    adapters = sum(v.size for p, v in params(lora) if p[-1] in ("lora_A", "lora_B"))
    assert adapters == 2 * 3712  # rank 8 on q,k,v,o,gate,up,down: 8 x (in + out) each, 3712 per layer
    assert sum(v.size for _, v in params(lora)) - adapters == sum(v.size for _, v in params(model))


def params(model):
    return [(p, v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]
