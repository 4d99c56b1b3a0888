"""MFU bases: the spec-peak table looks real device kinds up, and the trainer logs MFU on both bases."""

import pytest

from hqf_jax import cli
from hqf_jax.trainer import lm_task, mfu
from hqf_jax.trainer.loop import train
from hqf_jax.trainer.metrics import read_metrics
from tests.helpers import tiny_config


@pytest.mark.parametrize("kind,part,tflops", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", "H100 NVL", 835.0),
    ("NVIDIA H200", "H200", 989.0),
    ("NVIDIA GH200 480GB", "GH200", 989.0),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
    ("NVIDIA A100 80GB PCIe", "A100", 312.0),
    ("NVIDIA L4", "L4", 121.0),
    ("NVIDIA L40S", "L40S", 362.0),
    ("TPU v5 lite", "TPU v5e", 197.0),
])
def test_spec_table_finds_known_parts(kind, part, tflops):
    assert mfu.spec_part(kind) == (part, tflops)
    assert mfu.spec_peak_tflops(kind) == tflops


@pytest.mark.parametrize("kind", ["cpu", "NVIDIA GeForce RTX 4090", "Tesla T4", ""])
def test_unknown_parts_have_no_spec_peak(kind):
    assert mfu.spec_peak_tflops(kind) is None


def test_mfu_metrics_use_the_peaks_that_are_known():
    assert mfu.mfu_metrics(494.5, {"spec_tflops": 989.0, "measured_tflops": 750.0}) == pytest.approx(
        {"mfu_spec": 0.5, "mfu_measured": 494.5 / 750.0})
    assert mfu.mfu_metrics(10.0, {}) == {}
    assert mfu.device_peaks(measure=False).get("spec_tflops") is None  # the CPU is no known part


def test_measured_matmul_peak_is_positive():
    assert mfu.matmul_peak_tflops(64, 2) > 0


def test_trainer_logs_mfu_against_the_spec_peak_when_the_part_is_known(tmp_path, monkeypatch):
    monkeypatch.setattr(mfu, "spec_peak_tflops", lambda kind=None: 0.5)  # pretend the CPU is a known 0.5 TFLOP/s part
    cfg = tiny_config(**{"model.d_model": 32, "model.qk_dim": 32, "model.v_dim": 64, "model.ffn_dim": 64,
                         "data.max_files": 5, "data.seq_len": 32, "data.batch_size": 4, "train.steps": 4,
                         "train.log_every": 2, "train.eval_every": 1000, "train.sample_every": 1000,
                         "train.ckpt_every": 1000})
    task, _ = lm_task.build_task(cfg)
    train(task, cfg.train, cfg.mesh, tmp_path, cli.config_to_json(cfg), progress=False)
    logged = [m for m in read_metrics(tmp_path) if "tflops" in m]
    assert logged and all(m["mfu_spec"] == pytest.approx(m["tflops"] / 0.5) for m in logged)
    assert all("mfu_measured" not in m for m in logged)  # not measured on a CPU
