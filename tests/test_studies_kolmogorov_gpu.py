"""studies.kolmogorov_gpu --size tiny on the CPU: pretrain -> warm start -> every GRPO arm -> held-out scoring in
one process, with the table, JSON and curves written (the GPU run is the same code at --size gpu)."""

import json
import math

import pytest

from studies import kolmogorov_gpu as study


@pytest.mark.study  # ~100 CPU-seconds: five GRPO arms, each with its rollout compiles
def test_tiny_study_runs_end_to_end(tmp_path):
    r = study.main(["--out", str(tmp_path), "--size", "tiny", "--pretrain-steps", "3", "--warm-steps", "3",
                    "--grpo-steps", "2", "--eval-sources", "3", "--eval-samples", "2", "--total-s", "1e9",
                    "--pretrain-s", "1e9", "--warm-s", "1e9", "--grpo-s", "1e9",
                    f"data.store_dir={tmp_path / 'store'}"])
    for name in ("table.md", "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["arms"]) == set(study.ARMS) and saved["pretrain"]["steps"] == 3
    assert saved["warm"]["steps"] == 3
    for name, a in r["arms"].items():
        assert "error" not in a, name
        if name == "warm":  # the warm-started policy scored without a GRPO step
            assert a["steps"] == 0 and a["curve"] == [] and a["first_step_s"] == 0
        else:
            assert a["steps"] == 2 and [c["step"] for c in a["curve"]] == [1, 2], name
            assert a["first_step_s"] > 0 and a["seconds"] > 0
        assert all(math.isfinite(c["reward"]) for c in a["curve"])
        h = a["heldout"]
        assert 0 <= h["success@0.9"] <= 1 and 0 < h["bpb@0.9"] <= 8.0 + 1e-9  # raw fallback bounds it by 8
        assert 0 <= h["mean_gain_of_best"] <= 1 and math.isfinite(a["ac_bound_bpb"])
    assert "mem_fidelity" in r["arms"]["cdv_cc"]["curve"][-1]  # the memory rewrite trained in the gradient
    assert r["arms"]["cdv_nogate"]["hack"]["gate"] == 1.0  # gate off: every code keeps its fidelity
    for k in ("zlib -9, per source", "lzma 9e, one stream"):
        assert 0 < r["baselines_bpb"][k] < 16
    assert "| cdv_nogate | 2 |" in (tmp_path / "table.md").read_text()  # steps, train s, first step s per arm


def test_curve_windows_by_constraint_level():
    from hqf_jax.rl.kolmogorov_report import by_level

    curve = [{"step": i, "relax_n": 2 if i <= 3 else 0, "reward": float(i), "used": 0.5 if i <= 3 else 1.0,
              "signal": None if i > 3 else 0.25 * i} for i in range(1, 6)]
    w = by_level(curve)
    assert [(x["n"], x["from"], x["to"]) for x in w] == [(2, 1, 3), (0, 4, 5)]
    assert w[0]["reward"] == 2.0 and w[1]["reward"] == 4.5 and w[0]["used"] == 0.5
    assert w[0]["signal"] == 0.5 and w[1]["signal"] is None and w[0]["gate"] is None  # missing keys: no mean
