"""train.holo learns a memory from real bytes, saves it with orbax; eval.holo_generate samples from it."""

import json

import jax
import numpy as np
import pytest

from eval import holo_generate
from hqf_jax.errors import ConfigError
from hqf_jax.holo.checkpoint import restore_memory
from train import holo as train_holo


@pytest.mark.slow
def test_train_save_restore_generate(tmp_path, capsys):
    wd = tmp_path / "run"
    argv = ["--config", "configs/holo_tiny.py", "--workdir", str(wd), "train.max_train_bytes=8000", "data.max_files=6",
            "train.eval_bytes=1000", "memory.embedding=haar", 'train.compare_scores=["cosine","vorticity"]']
    train_holo.main(argv)
    summary = json.loads((wd / "summary.json").read_text())
    assert summary["n_stored"] == 8000 - 4 and summary["cache_dropped"] == 0
    assert 0.0 <= summary["valid_eval"]["top1"] <= 1.0
    # the same memory scored both ways; cosine is the config's own score, so it repeats valid_eval
    assert set(summary["compare"]) == {"cosine", "vorticity"}
    assert summary["compare"]["cosine"]["top1"] == summary["valid_eval"]["top1"]
    assert all(0.0 <= r["top1_sample"] <= 1.0 for r in summary["compare"].values())
    state, cfg, extra = restore_memory(str(wd / "memory"))
    assert extra["n_stored"] == summary["n_stored"] and cfg.embedding == "haar"
    ctx = holo_generate.prompt_context(b"import o", cfg.context_len)
    assert bytes(ctx.astype(np.uint8).tolist()) == b"rt o"
    out = holo_generate.generate(state, ctx, jax.random.key(0), config=cfg, length=32)
    assert out.shape == (32,) and int(out.max()) < 256 and int(out.min()) >= 0
    greedy = holo_generate.generate(state, ctx, jax.random.key(1), config=cfg, length=8, temperature=0.0)
    np.testing.assert_array_equal(
        np.asarray(greedy), np.asarray(holo_generate.generate(state, ctx, jax.random.key(2), config=cfg, length=8, temperature=0.0))
    )
    with pytest.raises(ConfigError, match="already exists"):
        train_holo.main(argv)
    capsys.readouterr()
    holo_generate.main(["--memory", str(wd / "memory"), "--prompt", "def ", "--length", "16"])
    assert capsys.readouterr().out.startswith("def ")
