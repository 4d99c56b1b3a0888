"""studies.holo_capacity at tiny scale: curves, the superposition bound and routing counts are what they claim."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from hqf_jax.holo import memory as hm
from studies import holo_capacity as hc


def test_bound_is_the_superposition_formula_with_poisson_loads():
    assert hc.bound_items(16, 1024) == pytest.approx(16 / (2 * math.log(1024)))
    assert hc.bound_items(256, 1024) == pytest.approx(18.47, abs=0.01)
    # k in [1, 2): a pair is within the bound when it is alone in its trace: exp(-n / traces)
    assert hc.bound_recall(5000, 65536, 16, 1024) == pytest.approx(math.exp(-5000 / 65536))
    ys = [hc.bound_recall(n, 4096, 256, 1024) for n in (10, 10_000, 60_000, 100_000, 1_000_000)]
    assert ys[0] == pytest.approx(1.0) and all(a >= b for a, b in zip(ys, ys[1:])) and ys[-1] < 1e-6
    assert hc.bound_recall(10, 100, 4, 1024) == 0.0  # a trace too small to hold one item


def test_tiny_study_writes_table_json_plot(tmp_path):
    res = hc.main(["--out", str(tmp_path), "--scale", "tiny", "--levels", "2", "--max-pairs", "256"])
    for name in ("table.md", "results.json", "capacity.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "results.json").read_text())["points"] == [16, 64, 256]
    (d,) = res["depths"]
    assert d["floats"] == 16 * 256 and set(d["trace_dims"].values()) == {16, 64}
    curves = d["curves"]
    # 16 pairs in 256 leaves: nearly all alone, and one pair per 4x4 unbinds exactly
    assert curves["holo L=2 cosine argmax"][0] >= 0.9 and curves["FHRR d=64"][0] >= 0.9
    for name, ys in curves.items():
        assert all(0.0 <= y <= 1.0 for y in ys) and ys[-1] < ys[0], name
    # sampling at T = phi^-1 spreads mass over the 64 candidates: far below the arg-max
    assert curves["holo L=2 cosine sample T=phi^-1"][0] < 0.5 * curves["holo L=2 cosine argmax"][0]
    # leaves occupied = distinct routes of the stored contexts, recomputed here from the same pairs
    rng = np.random.default_rng(0)
    ctx = rng.integers(0, 64, (256, hc.CONTEXT_LEN), dtype=np.int32)
    cfg = hm.HoloConfig(vocab_size=64, context_len=hc.CONTEXT_LEN, levels=2, cache_capacity=0, proto_k=0)
    state = hm.init_memory(cfg)
    for n, occ in zip((16, 64, 256), d["leaves_occupied"]):
        leaves = hm.leaf_of(cfg, hm.context_matrices(state.emb, jnp.asarray(ctx[:n])))
        assert occ == len(np.unique(np.asarray(leaves))) <= n
    assert "| 2 | bound (Poisson loads), D=16 |" in (tmp_path / "table.md").read_text()
