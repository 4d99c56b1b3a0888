"""studies.retention_vs_attention --small: both archs train on the same bytes and the table, JSON and plots land."""

import json
import math

import pytest

from studies import retention_vs_attention as rva


@pytest.mark.study
def test_small_study_writes_table_json_and_plots(tmp_path):
    rows, gaps = rva.main(["--small", "--out", str(tmp_path), "--budget", "1.5"])
    for name in ("table.md", "results.json", "bpb_vs_flops.png", "bpb_vs_time.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["arch"] for r in results["runs"]] == ["retnet", "transformer"]
    by = {r["arch"]: r for r in rows}
    assert abs(by["transformer"]["params"] / by["retnet"]["params"] - 1) < 0.02  # equal sizes
    for r in rows:
        assert r["train_s"] >= 1.5 and r["steps"] > 1 and len(r["points"]) == 2
        assert all(math.isfinite(p["valid_bpb"]) and 0 < p["valid_bpb"] < 9.5 for p in r["points"])
        assert r["points"][0]["flops"] < r["points"][1]["flops"]  # FLOPs grow with the steps
        assert math.isfinite(r["tflops"]) and r["tflops"] > 0
    (g,) = gaps
    assert math.isfinite(g["equal_flops"]["gap"]) and math.isfinite(g["equal_time"]["gap"])
    assert "| retnet | xs |" in (tmp_path / "table.md").read_text()


def test_unknown_size_names_the_sizes(tmp_path):
    with pytest.raises(Exception, match="sizes"):
        rva.main(["--small", "--out", str(tmp_path), "--sizes", "huge"])
