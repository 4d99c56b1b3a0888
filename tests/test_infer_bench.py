"""The generation benchmarks' small modes run on a CPU and report what they promise."""

import pytest


@pytest.mark.slow
def test_bench_generate_small(tmp_path):
    from bench.generate import main

    rows = main(["--small", "--out", str(tmp_path / "rows.json")])
    paths = {r["path"] for r in rows}
    assert any(p.startswith("old") for p in paths) and "engine bf16 jnp" in paths and "engine bf16 int8 jnp" in paths
    for r in rows:
        assert r["bytes_per_s"] > 0 and r["device"] and r["date"]
        if r["path"].startswith("engine"):
            assert r["limit_bytes_per_s"] > 0 and r["weight_bytes"] > 0
    assert (tmp_path / "rows.json").exists()


@pytest.mark.slow
def test_bench_serve_load_small():
    from bench.serve_load import main

    res = main(["--small"])
    assert res["requests"] == 6 and res["errors"] == 0
    assert res["bytes"] == 6 * 16 and res["bytes_per_s"] > 0 and res["p99_s"] >= res["p50_s"] > 0
