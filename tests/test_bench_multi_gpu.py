"""bench.multi_gpu (issue 21's scaling ladder): scaling efficiency against the same run's 1-GPU row of the same model
and form, FSDP x TP against FSDP alone, and (study) the multi-process row on virtual CPU devices."""

import math

import pytest

from bench import multi_gpu as MG


def _row(name, gpus, bps, base):
    return {"name": name, "gpus": gpus, "bytes_per_s": bps, "batch": 8, "seq_len": 64, "mem_gib": float("nan"),
            "base": base}


def test_efficiency_uses_the_base_of_the_same_model_and_form():
    rows = [_row("125M, 1 GPU", 1, 100.0, "125m"), _row("125M, data parallel, 4 GPUs", 4, 360.0, "125m"),
            _row("125M pallas, 1 GPU", 1, 50.0, "pallas"), _row("125M pallas, FSDP, 4 GPUs", 4, 150.0, "pallas"),
            _row("~1B, FSDP, 4 GPUs", 4, 40.0, "1b"),  # no 1-GPU ~1B row: no efficiency
            {"name": "~1B, FSDP x TP (2x2), 4 GPUs", "gpus": 4, "error": "boom"}]
    eff = MG.efficiency(rows)
    assert eff == {"125M, data parallel, 4 GPUs": pytest.approx(0.9), "125M pallas, FSDP, 4 GPUs": pytest.approx(0.75)}
    text = MG.table(rows, {"restored": {"model_bpb": 2.5}})
    assert "| 90% |" in text and "| 75% |" in text and "error: boom" in text and "bpb 2.5" in text


def test_tp_ratio_is_against_fsdp_of_the_same_model_on_as_many_gpus():
    rows = [_row("~1B, FSDP, 8 GPUs", 8, 100.0, "1b"), _row("~1B, FSDP, 4 GPUs", 4, 10.0, "1b"),
            _row("125M pallas, FSDP, 8 GPUs", 8, 400.0, "pallas"),
            _row("~1B, FSDP x TP (4x2), 8 GPUs", 8, 92.0, "1b")]
    assert MG.tp_ratios(rows) == ["~1B, FSDP x TP (4x2), 8 GPUs: 0.92x FSDP alone on 8 GPUs"]


@pytest.mark.study
def test_small_ladder_runs_processes_and_restores():
    """Two processes of one virtual CPU device each, joined by jax.distributed, train with FSDP over both; the
    checkpoint restores in one process and scores a finite bpb."""
    rows, restore = MG.main(["--small", "--gpus", "1,2", "--parts", "procs", "--steps", "20"])
    assert len(rows) == 1 and "error" not in rows[0] and rows[0]["gpus"] == 2, rows
    (bpb,) = restore.values()
    assert math.isfinite(bpb["model_bpb"]), bpb
