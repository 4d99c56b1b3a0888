"""The generation benchmarks' small modes run on a CPU and report what they promise."""

import numpy as np
import pytest


@pytest.mark.study
def test_bench_generate_small(tmp_path, capsys):
    import shutil

    from bench.generate import main
    from hqf_jax.data.sources import stdlib_root

    (src := tmp_path / "src").mkdir()
    for name in ("textwrap.py", "bisect.py", "heapq.py", "shlex.py"):
        shutil.copy(f"{stdlib_root()}/{name}", src / name)
    rows = main(["--small", "--count-ops", "--bpb-bytes", "4096", "--out", str(tmp_path / "rows.json"),
                 "--data-paths", str(src)])
    out = capsys.readouterr().out
    paths = {r["path"] for r in rows}
    assert any(p.startswith("old") for p in paths) and "engine bf16 jnp" in paths and "engine bf16 int8 jnp" in paths
    assert "engine bf16 fused" in paths and "engine bf16 fused_pallas" in paths
    spec = [p for p in paths if "speculative" in p]  # the layers' verify pass and the fused engine's
    assert sorted(spec) == ["engine bf16 speculative (2 heads)", "engine bf16 speculative fused dots (2 heads)"]
    by = {r["path"]: r for r in rows}
    assert by["engine bf16 fused"]["ops_per_step"] < by["engine bf16 jnp"]["ops_per_step"]
    assert by["engine bf16 jnp"]["bpb_cost"] == 0.0 and 0 < by["engine bf16 int8 jnp"]["bpb"] < 16
    for r in rows:  # every row (old path, token decoder, engines, speculative) beside its weight-read limit
        assert r["bytes_per_s"] > 0 and r["device"] and r["date"] and r.get("compiles", 0) == 0
        assert r["limit_bytes_per_s"] > 0 and r["weight_bytes"] > 0
    # the same-size token decoder: its row, its bytes/token measured on the files, its parameter count printed
    token = by["token decoder KV-cache bf16"]
    assert 1.5 < token["bytes_per_token"] < 8 and "(measured: BPE(512)" in out and "same-size token decoder" in out
    assert token["limit_bytes_per_s"] == pytest.approx(2 * token["copy_gb_s"] * 1e9 / token["weight_bytes"]
                                                       * token["bytes_per_token"])
    # the summary's "x token" column: each row's bytes/s over the token decoder's, as printed
    table = out.split("bench.generate on")[1].splitlines()[2:]
    assert len(table) == len(rows)
    for r, line in zip(rows, table):
        assert line.split()[1:3] == r["path"].split()[:2]
        assert r["x_token"] == pytest.approx(r["bytes_per_s"] / token["bytes_per_s"])
        assert f" {r['bytes_per_s'] / token['bytes_per_s']:6.2f}x " in line
        # "start s": each plain engine row's construction and warm-up, printed after the compiles column
        start = r.get("start_s")
        knob = any(k in r["path"] for k in ("speculative", "unroll", "min_rows", "dot_rows"))  # none has one
        assert (start is not None) == (r["path"].startswith("engine") and not knob)
        assert f"{r.get('compiles', 0):8d} " + (f"{start:7.1f}" if start is not None else "      -") in line
        assert start is None or start > 0
    assert (tmp_path / "rows.json").exists()


@pytest.mark.study
def test_bench_generate_small_fused_gemv():
    """The GPU command's form (fused_pallas against fused_gemv, ops per step) runs end to end on a CPU."""
    from bench.generate import main

    rows = main(["--small", "--no-old", "--decode-impls", "fused_pallas,fused_gemv", "--count-ops", "--dot-rows", "1,8",
                 "--min-rows", "1,4"])
    by = {r["path"]: r for r in rows}
    for p in ("engine bf16 fused_pallas", "engine bf16 fused_gemv"):
        assert by[p]["bytes_per_s"] > 0 and by[p]["ops_per_step"] > 0 and by[p]["compiles"] == 0
    for p in ("engine bf16 fused_pallas dot_rows 8", "engine bf16 fused_pallas dot_rows 1"):
        assert by[p]["bytes_per_s"] > 0  # the padded-dot rows and the unpadded one (fused paths only)
    assert not any("fused_gemv dot_rows" in p for p in by)
    assert by["engine bf16 fused_gemv min_rows 4"]["bytes_per_s"] > 0  # the whole batch padded: every path


@pytest.mark.study
def test_bench_serve_load_small():
    from bench.serve_load import main

    res = main(["--small"])
    assert res["requests"] == 6 and res["errors"] == 0
    assert res["bytes"] == 6 * 16 and res["bytes_per_s"] > 0 and res["p99_s"] >= res["p50_s"] > 0
    loop = res["loop"]  # the breakdown: every byte served is a useful slot-step, every request prefilled once
    assert loop["useful"] == res["bytes"] and loop["prefill_rows"] == 6 and 1 <= loop["prefill_calls"] <= 6
    assert loop["slot_steps"] == loop["chunks"] * 2 * 8 and loop["wait_s"] + loop["prefill_s"] <= loop["wall_s"]
    assert res["units"]["chunk_device_s"] > 0 and res["units"]["join_device_s"] > 0
    assert 0 < res["device_estimate"]["decode_share"] and 0 <= res["device_estimate"]["prefill_share"]


def test_read_limit_is_batch_rows_at_one_weight_read_a_step():
    from hqf_jax.infer.token_baseline import read_limit

    assert read_limit(1, 4e12, 2e9) == 2000.0  # 1 GB/s of bandwidth per GB of weights: a step each 0.5 ms
    assert read_limit(8, 4e12, 2e9, 3.5) == pytest.approx(8 * 2000 * 3.5)  # linear in the batch and bytes a step
    assert read_limit(3, 1e9, 1e6) < read_limit(3, 1e9, 5e5)  # fewer weight bytes (int4 against bf16): higher
    for bad in ((0, 1e9, 1e6), (1, 0.0, 1e6), (1, 1e9, 0), (1, 1e9, 1e6, 0.0)):
        with pytest.raises(ValueError, match="positive"):
            read_limit(*bad)


def test_token_ratio_is_against_the_first_token_row_of_a_config_and_batch():
    """A padded token decoder row (min_rows) after the plain one does not become the reference."""
    from hqf_jax.infer.token_baseline import add_token_ratios

    rows = [dict(config="c", batch=1, path="token decoder KV-cache", bytes_per_s=100.0),
            dict(config="c", batch=1, path="token decoder KV-cache min_rows 8", bytes_per_s=50.0),
            dict(config="c", batch=1, path="RetNPhi engine", bytes_per_s=25.0),
            dict(config="c", batch=8, path="RetNPhi engine", bytes_per_s=25.0)]
    add_token_ratios(rows)
    assert [r.get("x_token") for r in rows] == [1.0, 0.5, 0.25, None]


@pytest.mark.study
def test_bench_generate_retnphi_small(capsys):
    from bench.generate_retnphi import main

    rows = main(["--small", "--min-rows", "4"])
    out = capsys.readouterr().out
    names = [r["path"] for r in rows]
    assert "token decoder KV-cache" in names and "RetNPhi engine float32" in names
    assert "RetNPhi engine float32 min_rows 4" in names  # the padded-batch row, and the baseline padded alike
    assert "token decoder KV-cache min_rows 4" in names
    assert "RetNPhi engine float32 int8" in names  # the quantized engine row (--quants none,int8 in --small)
    assert all(r["bytes_per_s"] > 0 and r["compiles"] == 0 for r in rows)  # no recompile inside a timed call
    by = {r["path"]: r for r in rows}
    bw, token, plain = rows[0]["copy_gb_s"] * 1e9, by["token decoder KV-cache"], by["RetNPhi engine float32"]
    assert bw > 0 and "copy bandwidth" in out
    # the weight-read limit: the token rows at their bytes/token over the decoder's weights, the engine rows over the
    # engine's own (int8 reads fewer bytes than float32 only where the packed form is used: not the CPU reference)
    assert token["limit_bytes_per_s"] == pytest.approx(2 * bw / token["weight_bytes"] * token["bytes_per_token"])
    assert plain["limit_bytes_per_s"] == pytest.approx(2 * bw / plain["weight_bytes"])
    assert by["RetNPhi old path (nn.generate.sample)"]["weight_bytes"] == plain["weight_bytes"]
    assert by["token decoder KV-cache min_rows 4"]["limit_bytes_per_s"] == token["limit_bytes_per_s"]
    assert plain["x_token"] == pytest.approx(plain["bytes_per_s"] / token["bytes_per_s"])
    table = out.split("bench.generate_retnphi on")[1].splitlines()[2:2 + len(rows)]
    for r, line in zip(rows, table):  # the printed table: a line a row with its limit and % limit
        assert r["limit_bytes_per_s"] > 0 and r["weight_bytes"] > 0 and r["path"] in line
        cells = line.split(r["path"])[1].split()
        limit, pct = float(cells[3].replace(",", "")), float(cells[4].rstrip("%"))
        assert limit == pytest.approx(r["limit_bytes_per_s"], abs=0.5)
        assert pct == pytest.approx(100 * r["bytes_per_s"] / r["limit_bytes_per_s"], abs=0.051)
        assert cells[5] == f"{r['x_token']:.2f}x"
    # start-up: the plain engine rows only (the quantized one counts its construction), printed in "start s"
    starts = {r["path"]: r["start_s"] for r in rows if r.get("start_s") is not None}
    assert set(starts) == {"RetNPhi engine float32", "RetNPhi engine float32 int8"}
    assert all(v > 0 for v in starts.values()) and f"(start {starts['RetNPhi engine float32 int8']:.1f} s)" in out


@pytest.mark.study
def test_bench_generate_retnphi_spec_heads_small(tmp_path, capsys):
    """--spec-heads end to end at tiny size: the heads train on real bytes (held-out head bpb falls), the speculative
    row stands beside the plain engine and the token decoder at batch 1, with its acceptance and break-even."""
    import shutil

    from bench.generate_retnphi import main
    from hqf_jax.data.sources import stdlib_root

    for name in ("textwrap.py", "bisect.py", "heapq.py", "keyword.py", "shlex.py", "fnmatch.py"):
        shutil.copy(f"{stdlib_root()}/{name}", tmp_path / name)
    rows = main(["--small", "--spec-heads", "2", "--head-steps", "30", "--data-paths", str(tmp_path), "--no-old"])
    out = capsys.readouterr().out
    spec = [r for r in rows if "speculative 2 heads" in r["path"]]  # per batch (1,2 in --small), per --quants engine
    names = ["RetNPhi engine float32 speculative 2 heads*", "RetNPhi engine float32 int8 speculative 2 heads*"]
    assert [(r["path"], r["batch"]) for r in spec] == [(n, b) for b in (1, 2) for n in names]
    assert all(r["bytes_per_s"] > 0 and r["compiles"] == 0 and r["limit_bytes_per_s"] > 0 for r in spec)
    assert any(r["path"] == "token decoder KV-cache" and r["batch"] == 1 for r in rows)
    line = next(x for x in out.splitlines() if x.startswith("extra heads (2"))
    parts = line.split("held-out head bpb [")[1].split("-> [")
    before, after = (np.array(x.split("]")[0].split(", "), float) for x in parts)
    assert (after < before).all(), line
    assert out.count("accepted bytes per verify") == 2 and out.count("(acceptance: batch 1's)") == 2
    assert "NOT representative" in out
    assert out.count("x the token decoder at batch 1") == 2 and "nanx" not in out


@pytest.mark.study
def test_bench_serve_load_compares_with_batched():
    from bench.serve_load import main

    res = main(["--small", "--decode-impl", "fused"])
    assert res["errors"] == 0 and res["batched_bytes_per_s"] > 0 and 0 < res["fraction_of_batched"]


@pytest.mark.study
def test_bench_lower_startup_small():
    """The start-up probe lowers a quantized engine for CUDA on a CPU: per call site, a Mosaic GPU kernel at each
    quantized layer (4 in lm_tiny); through the jitted entry, one per weight shape."""
    from bench.lower_startup import main

    shared = main(["--config", "configs/lm_tiny.py", "--batch", "8"])
    per_site = main(["--config", "configs/lm_tiny.py", "--batch", "8", "--per-site", "--eager-layout"])
    for stage in ("prefill", "decode loop"):
        assert shared[stage][1] == 1 and per_site[stage][1] == 4
        assert shared[stage][2] < per_site[stage][2]  # the lowered text: one kernel's copy, not four
    # the layout compiled once per shape, against once per op (both count the quantization's own compiles)
    assert int(shared["construct"][1].split()[0]) < int(per_site["construct"][1].split()[0])
    import jax

    assert jax.default_backend() == "cpu"  # the probe's patch undone
