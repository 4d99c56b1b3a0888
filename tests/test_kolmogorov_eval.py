"""eval.kolmogorov_eval: raw fallback, the arithmetic-coding bound by hand, baselines on the same bytes."""

import math

import numpy as np

from eval import kolmogorov_eval as ke
from hqf_jax import cli
from hqf_jax.ops.constants import BYTE_VOCAB_SIZE
from hqf_jax.rl.toy_policy import ScriptPolicy


def test_uniform_policy_table_and_plot(tmp_path):
    cfg = cli.load_config_file("configs/grpo_tiny.py")
    uniform = ScriptPolicy(np.zeros((1, BYTE_VOCAB_SIZE), np.float32))  # p = 1/259 for every token
    r = ke.evaluate(uniform, cfg, num=3, samples=2, threshold=0.9)
    n = cfg.rl.source_len
    # AC bound: (n bytes + EOS) * log2(259) bits per source of n bytes
    assert math.isclose(r["ratios"]["policy arithmetic-coding bound (lossless)"],
                        (n + 1) * math.log2(BYTE_VOCAB_SIZE) / 8 / n, rel_tol=1e-5)
    # a uniform D reconstructs nothing: every source falls back to raw storage (ratio 1)
    assert r["success_at_threshold"] == 0.0
    assert r["ratios"]["policy C->D @ fidelity>=0.9 (best of 2+greedy, raw fallback)"] == 1.0
    assert r["curve"]["0.9"]["ratio_success_only"] is None
    srcs = [e["s"].encode("latin-1") for e in r["examples"]]
    assert r["ratios"]["zlib -9 raw, per source"] == sum(ke.zlib_raw(s) for s in srcs) / r["bytes"]
    md = ke.table(r)
    assert "| zlib -9 raw, one stream |" in md and "| 0.9 | 1.000 | 0.00 | - |" in md
    ke.plot(r, tmp_path / "k.png")
    assert (tmp_path / "k.png").stat().st_size > 10_000
