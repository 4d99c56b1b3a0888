"""bench.long_context --small: retention beside the matched transformer (and the old mixer), every row timed."""

import pytest

from bench import long_context


@pytest.mark.study
def test_small_long_context_bench_times_the_transformer_baseline(capsys):
    rows = long_context.main(["--small", "--baseline", "transformer,mixer"])
    names = {name for name, *_ in rows}
    assert names == {"retention (chunkwise)", "transformer (xla)", "retnet attention mixer (xla)"}
    for name, t, b, r in rows:
        assert "error" not in r, (name, r)
        assert r["step_ms"] > 0 and r["tflops"] > 0
    params = {name: r["params"] for name, _, _, r in rows}
    assert abs(params["transformer (xla)"] / params["retention (chunkwise)"] - 1) < 0.01
    assert "| transformer (xla) |" in capsys.readouterr().out
