"""The quant kernel benchmark and probe scripts run end to end on CPU (interpret mode): every benchmarked kernel
passes the bench's own check against its reference, and the probe times every stage it is asked for."""

import math
import re

import pytest

from bench import quant_kernel_probe
from bench import quant_kernels as bench_quant_kernels


def test_bench_small_checks_every_kernel(capsys):
    bench_quant_kernels.main(["--small", "--shapes", "256x256", "--batches", "1,3", "--methods",
                              "int4,phi5u8,nf4dq", "--sweep", "none"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\s+256x256\s+\d+\s", line)]
    assert len(rows) == 6, out
    assert all(" ok " in row for row in rows), out
    assert "FAIL" not in out


def test_probe_small_times_each_stage(capsys):
    quant_kernel_probe.main(["--small", "--methods", "int4", "--stages", "load,unpack,slot"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("256x256")]
    assert lines, "no probe rows"
    times = [float(v) for v in lines[-1].split("|")[-1].split()]
    # a stage that fails prints nan; interpret-mode times themselves are noise (overhead-subtracted, may be 0)
    assert len(times) == 3 and all(math.isfinite(t) and t >= 0 for t in times)


def test_best_config_is_picked_only_among_passing_ones():
    fast_wrong = (1e-6, 2e-6, "fast but wrong", False, 0.5)
    slow_right = (5e-6, 6e-6, "slow but right", True, 1e-3)
    assert bench_quant_kernels.pick_best([fast_wrong, slow_right])[2] == "slow but right"
    assert bench_quant_kernels.pick_best([fast_wrong]) is None


def test_sweep_fits_every_issue_shape_and_batch():
    """Every (shape, method, batch) of the default sweep has configs that fit, and from batch 32 on the tensor-core
    tile of the batch is the batch itself (no padding to 64 or 128)."""
    import jax

    from hqf_jax import quant as Q
    from hqf_jax.quant.linear import placeholder

    batches = [int(b) for b in bench_quant_kernels.BATCHES.split(",")]
    assert batches == [1, 4, 8, 16, 32, 64, 256]
    for shape in bench_quant_kernels.SHAPES.split(","):
        k, n = (int(v) for v in shape.split("x"))
        for label, (spec, kind) in bench_quant_kernels.METHODS.items():
            pw = jax.eval_shape(lambda spec=spec: placeholder(Q.parse_method(spec), n, k))
            for b in batches:
                cfgs = [c for c in bench_quant_kernels.sweep_configs(kind, b, "small", spec.startswith("phi"))
                        if bench_quant_kernels._fits(pw, c)]
                assert cfgs, (shape, label, b)
                if kind == "fused" and b in (32, 64):
                    assert {c.block_b for c in cfgs} == {b}


def test_bench_reports_no_best_when_every_config_fails_its_check(capsys, monkeypatch):
    monkeypatch.setattr(bench_quant_kernels, "check", lambda *a: (False, 0.5))
    bench_quant_kernels.main(["--small", "--shapes", "256x256", "--batches", "1", "--methods", "int4", "--sweep",
                              "none"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if re.match(r"\s+256x256\s+1\s", line))
    assert "FAIL" in row and row.rstrip().endswith("-")
    assert re.search(r"256x256\s+int4\s+\S+\s+-$", out, re.M), out


def test_lower_only_new_batches():
    """The batch 4-64 configs lower to Triton for CUDA (on CPU)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        bench_quant_kernels.main(["--lower-only", "--shapes", "256x512", "--batches", "4,32,64", "--methods",
                                  "int4,nf4", "--sweep", "small"])
    out = buf.getvalue()
    assert re.search(r"lowered for cuda: [1-9]\d* ok, 0 failed", out), out


def test_sass_counts_reads_cuobjdump_and_ptxas_text(tmp_path):
    """bench.sass_counts (the SASS table of docs/BENCHMARKS.md, stop 30): opcodes counted without modifiers and
    with their predicated forms, ptxas -v's registers / stack / spills read, and a clear exit without ptxas."""
    from bench.sass_counts import main, opcode_counts, ptxas_report

    sass = """
        /*0010*/                   PRMT R3, R2, 0x5410, R1 ;                         /* 0x0000541002037816 */
        /*0020*/              @!P0 PRMT R4, R2, 0x3276, R1 ;                         /* 0x0000327602048816 */
        /*0030*/                   ST.E.U16 desc[UR14][R4.64+0xc], R43 ;              /* 0x00000c2b04007985 */
        /*0040*/               @P1 IMAD.MOV.U32 R5, RZ, RZ, R6 ;                     /* 0x000000ffff057224 */
    """
    assert opcode_counts(sass) == {"PRMT": 2, "ST": 1, "IMAD": 1}
    rep = ptxas_report("ptxas info    : Function properties for k\n    128 bytes stack frame, 0 bytes spill stores, "
                       "0 bytes spill loads\nptxas info    : Used 168 registers, used 16 barriers")
    assert rep == dict(registers=168, stack=128, spill_stores=0, spill_loads=0)
    with pytest.raises(SystemExit, match="no ptxas"):
        main([str(tmp_path), "--cuda-bin", str(tmp_path)])
