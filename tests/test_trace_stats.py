"""The profiler-trace reader (hqf_jax/infer/trace_stats.py) on synthetic traces with known answers, and
bench.decode_profile end to end on a CPU (where the trace has XLA:CPU thunks, no GPU streams)."""

import gzip
import json

import pytest
from flax import nnx

from hqf_jax import trace_stats as T

GPU, HOST = 1, 700


def meta(pid, pname, threads):
    out = [dict(ph="M", pid=pid, name="process_name", args=dict(name=pname))]
    return out + [dict(ph="M", pid=pid, tid=t, name="thread_name", args=dict(name=n)) for t, n in threads.items()]


def x(pid, tid, name, ts, dur, **args):
    return dict(ph="X", pid=pid, tid=tid, name=name, ts=ts, dur=dur, args=args)


def gpu_trace():
    """Two streams (kernels, a memcpy overlapping them), a derived "XLA Ops" line that repeats them with a
    span over everything, and host events: none of the last two may count as device time."""
    ev = meta(GPU, "/device:GPU:0", {7: "Stream #7(Compute)", 8: "Stream #8(MemcpyD2H)", 101: "XLA Ops"})
    ev += meta(HOST, "/host:CPU", {1: "python"})
    ev += [x(GPU, 7, "fusion.1", 0, 10), x(GPU, 7, "fusion.22", 12, 8), x(GPU, 7, "loop_add_fusion_3", 20, 5),
           x(GPU, 7, "void gemv2T_kernel_val<int, float, 128>(Params)", 125, 10),
           x(GPU, 7, "fusion.5", 138, 2), x(GPU, 7, "fusion.6", 140.5, 0.5),
           x(GPU, 8, "MemcpyD2H", 5, 9),
           x(GPU, 101, "fusion.1", 0, 10), x(GPU, 101, "while.3", -20, 200),
           x(HOST, 1, "PjitFunction(_decode)", -50, 250), x(HOST, 1, "ParseArguments", -40, 10)]
    return dict(displayTimeUnit="ns", traceEvents=ev)


def test_union_merges_overlaps_nesting_and_touching_intervals():
    assert T.union([(5, 6), (0, 2), (1, 3), (3, 4), (10, 20), (12, 13)]) == [(0, 4), (5, 6), (10, 20)]
    assert T.union([]) == []


def test_normalize_strips_instance_suffixes_and_signatures():
    assert T.normalize("fusion.123") == "fusion"
    assert T.normalize("loop_add_fusion_2") == "loop_add_fusion"
    assert T.normalize("input_reduce_fusion.4.1") == "input_reduce_fusion"
    assert T.normalize("void gemv2T_kernel_val<int, float>(Params)") == "gemv2T_kernel_val"
    assert T.normalize("MemcpyD2H") == "MemcpyD2H" and T.normalize("sm90_xmma_gemm_bf16") == "sm90_xmma_gemm_bf16"


def test_gpu_trace_busy_gaps_counts_and_top_kernels():
    events, source = T.device_events(gpu_trace())
    assert source == "gpu" and len(events) == 7  # the derived line and the host are left out
    s = T.summarize(events, steps=2, top=3)
    # union [0,25] [125,135] [138,140] [140.5,141]: busy 37.5 of a 141 µs wall, gaps 100, 3 and 0.5
    assert s["wall_us"] == pytest.approx(141 / 2) and s["busy_us"] == pytest.approx(37.5 / 2)
    assert s["idle_us"] == pytest.approx(103.5 / 2) and s["busy_frac"] == pytest.approx(37.5 / 141)
    assert s["events_per_step"] == 3.5 and s["summed_us"] == pytest.approx(44.5 / 2)
    assert s["median_us"] == 8 and s["p90_us"] == pytest.approx(10) and s["max_gap_us"] == pytest.approx(100)
    by_bin = {tuple(g["range_us"]): g for g in s["gaps"]}
    assert by_bin[(0.0, 1.0)]["per_step"] == 0.5 and by_bin[(0.0, 1.0)]["us_per_step"] == pytest.approx(0.25)
    assert by_bin[(1.0, 5.0)]["us_per_step"] == pytest.approx(1.5) and by_bin[(100.0, None)]["per_step"] == 0.5
    assert by_bin[(5.0, 20.0)]["per_step"] == 0 and sum(g["us_per_step"] for g in s["gaps"]) == pytest.approx(
        s["idle_us"])
    top = s["top"]
    assert [k["name"] for k in top] == ["fusion", "gemv2T_kernel_val", "MemcpyD2H"]
    assert top[0]["count"] == 4 and top[0]["per_step"] == 2 and top[0]["mean_us"] == pytest.approx(20.5 / 4)
    assert top[0]["share"] == pytest.approx(20.5 / 44.5) and top[2]["us_per_step"] == pytest.approx(4.5)


def test_host_summary_is_the_host_threads_only():
    (h,) = T.host_summary(gpu_trace())
    assert h["process"] == "/host:CPU" and h["thread"] == "python" and h["events"] == 2
    assert h["busy_us"] == pytest.approx(250) and h["top"][0]["name"] == "PjitFunction(_decode)"


def test_cpu_trace_falls_back_to_thunk_leaves():
    ev = meta(HOST, "/host:CPU", {1: "python", 2: "tf_XLAEigen/1", 3: "tf_XLAEigen/2"})
    ev += [x(HOST, 1, "PjitFunction(f)", 0, 100),
           x(HOST, 2, "while.5", 10, 50, hlo_op="while.5"), x(HOST, 2, "fusion.1", 12, 8, hlo_op="fusion.1"),
           x(HOST, 2, "end: fusion.1", 20, 0.1), x(HOST, 2, "dot.2", 30, 10, hlo_op="dot.2"),
           x(HOST, 3, "copy.4", 35, 10, hlo_op="copy.4")]
    events, source = T.device_events(dict(traceEvents=ev))
    assert source == "cpu_thunks" and [e["name"] for e in events] == ["fusion.1", "dot.2", "copy.4"]
    s = T.summarize(events, steps=1)
    assert s["busy_us"] == pytest.approx(8 + 15) and s["wall_us"] == pytest.approx(33)
    assert T.device_events(dict(traceEvents=ev[:5]))[1] == "none"  # the metadata and the python event only


def test_load_reads_the_newest_run_folder(tmp_path):
    for run, n in (("2026_01_01_00_00_00", 1), ("2026_01_01_00_00_01", 2)):
        d = tmp_path / "plugins" / "profile" / run
        d.mkdir(parents=True)
        with gzip.open(d / ("perfetto_trace.json.gz" if n == 2 else "host.trace.json.gz"), "wt") as f:
            json.dump(dict(traceEvents=[x(HOST, 1, "a", 0, n)]), f)
    trace, f = T.load(tmp_path)
    assert trace["traceEvents"][0]["dur"] == 2 and f.name == "perfetto_trace.json.gz"
    with pytest.raises(FileNotFoundError, match="create_perfetto_trace"):
        T.load(tmp_path / "nothing")


def test_decode_profile_end_to_end_on_cpu(tmp_path, capsys):
    from bench.decode_profile import main

    res = main(["--small", "--decode-impls", "jnp", "--steps", "4", "--calls", "2", "--min-rows", "2", "--out",
                str(tmp_path)])
    text = capsys.readouterr().out
    assert "no GPU stream events" in text and "Top 15 kernels of jnp" in text
    (r,) = res["rows"]
    assert r["source"] == "cpu_thunks" and r["steps"] == 8 and r["bytes_per_s"] > 0
    assert 0 < r["busy_us"] <= r["wall_us"] and r["idle_us"] == pytest.approx(r["wall_us"] - r["busy_us"])
    assert r["events_per_step"] >= 1 and 0 < r["median_us"] <= r["p90_us"] and r["hlo_ops_per_step"] > 0
    assert r["busy_us"] <= r["summed_us"] + 1e-6 and 0 < len(r["top"]) <= 15
    assert sum(k["share"] for k in r["top"]) <= 1 + 1e-9 and sum(k["us_per_step"] for k in r["top"]) <= (
        r["summed_us"] * (1 + 1e-9))
    assert r["host"] and all(h["events"] > 0 for h in r["host"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"][0]["impl"] == "jnp" and (tmp_path / "table.md").exists()
    assert (tmp_path / "trace_jnp.json.gz").exists() and T.device_events(
        json.load(gzip.open(tmp_path / "trace_jnp.json.gz")))[1] == "cpu_thunks"


def test_inventory_lists_threads_by_event_count():
    inv = T.inventory(gpu_trace())
    assert inv[0] == dict(process="/device:GPU:0", thread="Stream #7(Compute)", events=6)
    assert sum(t["events"] for t in inv) == 11 and {t["thread"] for t in inv} >= {"XLA Ops", "python"}


def test_gpu_threads_without_stream_names_leave_out_the_derived_lines():
    ev = meta(GPU, "/device:GPU:0", {3: "Compute 3", 101: "XLA Ops", 102: "XLA Modules"})
    ev += [x(GPU, 3, "fusion.1", 0, 4), x(GPU, 101, "fusion.1", 0, 4), x(GPU, 102, "jit__decode", 0, 50)]
    events, source = T.device_events(dict(traceEvents=ev))
    assert source == "gpu_unnamed" and [(e["tid"], e["name"]) for e in events] == [(3, "fusion.1")]


def test_trace_op_counts_the_kernels_of_one_call():
    """kernel_timing.trace_op (the Hopper stage probe's --trace): a profiler trace of the timing loop, per call;
    on a CPU the XLA:CPU thunks stand in for kernels. Busy time never exceeds the wall."""
    import jax.numpy as jnp

    from hqf_jax.quant.kernel_timing import trace_op

    x = jnp.ones((4, 64), jnp.float32)
    ws = [jnp.ones((64, 32), jnp.float32), jnp.full((64, 32), 2.0, jnp.float32)]
    r = trace_op(lambda x, w: jnp.tanh(x @ w), x, ws, reps=5)
    assert r["steps"] == 10 and r["events_per_step"] >= 1
    assert 0 < r["busy_us"] <= r["wall_us"] + 1e-6 and r["top"]


def test_decode_profile_retnphi_beside_its_token_decoder_on_cpu(capsys):
    """--retnphi tiny --token-decoder (the GPU command's form at tiny size): both steps profiled, each with
    kernels per step and top kernels; the token decoder's bytes/s at the assumed bytes per token."""
    from bench.decode_profile import main

    res = main(["--retnphi", "tiny", "--token-decoder", "--small", "--steps", "4", "--calls", "2", "--top", "5",
                "--bytes-per-token", "3"])
    text = capsys.readouterr().out
    assert [r["impl"] for r in res["rows"]] == ["RetNPhi engine", "token decoder KV-cache"]
    assert "RetNPhi tiny" in res["config"] and res["bytes_per_token"] == 3.0 and "3 bytes/token (assumed)" in text
    for r in res["rows"]:
        assert "error" not in r and r["source"] == "cpu_thunks" and r["bytes_per_s"] > 0 and r["weight_mb"] > 0
        assert r["events_per_step"] > 0 and 0 < r["busy_us"] <= r["wall_us"] and 0 < len(r["top"]) <= 5
        assert f"Top {len(r['top'])} kernels of {r['impl']}" in text and f"- {r['impl']}: device busy" in text
    ret, tok = res["rows"]
    # the token row reads the decoder's weights but its input embedding (one row a token: step_weight_bytes)
    from hqf_jax.infer.bench_setup import retnphi_decoder
    from hqf_jax.nn.hf_loading import param_bytes

    dec = nnx.eval_shape(lambda: retnphi_decoder("tiny", "bfloat16"))
    assert tok["weight_mb"] * 1e6 == pytest.approx(param_bytes(dec) - param_bytes(dec.model.embed_tokens))
    # bytes/s of the token decoder = tokens/s x 3: its untraced µs/step gives it back
    assert tok["bytes_per_s"] == pytest.approx(3 * 1e6 / tok["untraced_us"], rel=1e-6)
    assert ret["bytes_per_s"] == pytest.approx(1e6 / ret["untraced_us"], rel=1e-6)


def test_decode_profile_speculative_row_is_per_verify_pass(capsys):
    """--speculative --heads 2 (random heads): a row whose step is one verify pass; its bytes/s counts the bytes
    emitted (--steps a row a call over the passes a call runs, every pass the device ran); a pass does all of a decode step's work and more,
    so it runs more kernels (XLA:CPU thunks here) than the plain step beside it. Without heads: a clear refusal."""
    from bench.decode_profile import main

    res = main(["--small", "--decode-impls", "jnp", "--speculative", "--heads", "2", "--steps", "6", "--calls", "2",
                "--no-count-ops"])
    step, spec = res["rows"]
    assert "error" not in spec and spec["impl"].startswith("speculative (2 heads")
    from hqf_jax.infer.speculative import PASSES_PER_SYNC

    # every pass run: whole trips of PASSES_PER_SYNC, at most PASSES_PER_SYNC - 1 past the 6 a row can need
    assert spec["steps_per_call"] % PASSES_PER_SYNC == 0 and 1 <= spec["steps_per_call"] < 6 + PASSES_PER_SYNC
    assert spec["steps"] == 2 * spec["steps_per_call"]
    assert spec["bytes_per_s"] == pytest.approx(1e6 * 6 / spec["steps_per_call"] / spec["untraced_us"], rel=1e-6)
    assert spec["events_per_step"] > step["events_per_step"] > 0
    capsys.readouterr()
    with pytest.raises(SystemExit, match="extra heads"):
        main(["--small", "--decode-impls", "jnp", "--speculative"])
