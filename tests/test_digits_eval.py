"""Digits eval end to end on a tiny run: bpb for seen and unseen classes, classifier scores, PNG grid."""

import numpy as np
import pytest

from eval import digits_eval
from hqf_jax import cli
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.loop import train
from tests.helpers import ROOT

TINY = ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.qk_dim=32", "model.v_dim=64",
        "model.ffn_dim=64", "model.chunk_size=32", "data.seq_len=82", "data.batch_size=8", "train.steps=20",
        "train.eval_every=20", "train.ckpt_every=20", "train.log_every=10", "train.sample_every=1000",
        "train.eval_max_bytes=1640"]


def test_classifier_is_a_real_reader_of_digits():
    clf, acc = digits_eval.classifier()
    assert acc > 0.97
    assert clf.predict(np.zeros((1, 64))).shape == (1,)


@pytest.mark.slow
def test_digits_eval_end_to_end(tmp_path):
    cfg = cli.apply_overrides(cli.load_config_file(str(ROOT / "configs/digits.py")), TINY)
    task, _ = lm_task.build_task(cfg)
    train(task, cfg.train, cfg.mesh, tmp_path / "run", cli.config_to_json(cfg), progress=False)
    r = digits_eval.measure(str(tmp_path / "run"), per_class=2, out=str(tmp_path / "out"))
    assert r["holdout_class"] == 7 and r["unseen"]["docs"] == 179
    # the header of an unseen class costs more bits than a seen one (the model never read "digit 7")
    assert r["unseen"]["model_header_bits"] > r["seen"]["model_header_bits"]
    assert set(r["per_class"]) == set(range(10))
    assert 0.0 <= r["heldout_class_accuracy"] <= 1.0 and 0.0 <= r["pixel_bytes_out_of_range"] <= 1.0
    assert (tmp_path / "out" / "digits_samples.png").stat().st_size > 1000
