"""The quant kernel benchmark and probe scripts run end to end on CPU (interpret mode): every benchmarked kernel
passes the bench's own check against its reference, and the probe times every stage it is asked for."""

import math
import re

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
