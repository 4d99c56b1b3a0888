"""How training cost grows with sequence length: the ~128M byte LM (retention) beside a softmax-attention
model of the same size (same projections, GroupNorm and gate; jax.nn.dot_product_attention), at a fixed
number of bytes per step.

    python -m bench.long_context [--seq-lens 2048,8192,32768] [--forms chunkwise,pallas]
    python -m bench.long_context --small     # CPU check

Per row: step time, bytes/s, and the device memory the compiled step needs (arguments + XLA
temporaries, from the compiler's memory analysis), or the error (e.g. out of memory).
"""

from __future__ import annotations

import argparse

from bench.lm import bench_train
from hqf_jax import cli
from hqf_jax.nn.retnet import RetNetConfig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/lm_125m.py")
    p.add_argument("--seq-lens", default="2048,8192,32768")
    p.add_argument("--forms", default="chunkwise", help="retention forms to run (chunkwise, pallas)")
    p.add_argument("--attention-impls", default="cudnn")
    p.add_argument("--bytes-per-step", type=int, default=65536)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--small", action="store_true")
    a = p.parse_args(argv)
    cfg = cli.load_config_file(a.config)
    base = RetNetConfig.from_dict(cfg.model)
    seq_lens = [int(t) for t in a.seq_lens.split(",")]
    if a.small:
        base = RetNetConfig(d_model=64, num_layers=2, num_heads=2, qk_dim=64, v_dim=128, ffn_dim=192, chunk_size=16)
        seq_lens, a.bytes_per_step, a.steps = [64, 256], 512, 2
    specs = [("retention", f, "xla") for f in a.forms.split(",")]
    specs += [("attention", "chunkwise", i) for i in a.attention_impls.split(",")]
    rows = []
    for t in seq_lens:
        batch = max(1, a.bytes_per_step // t)
        for mixer, form, impl in specs:
            mcfg = RetNetConfig(**{**base.__dict__, "mixer": mixer, "form": form, "attention_impl": impl})
            name = f"retention ({form})" if mixer == "retention" else f"softmax attention ({impl})"
            try:
                r = bench_train(cfg, mcfg, t, batch, a.steps)
            except Exception as e:  # out of memory or an unsupported implementation: report, go on
                msg = str(e)
                r = {"error": "out of memory" if "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower()
                     else f"{type(e).__name__}: {msg.splitlines()[0][:150] if msg else ''}"}
            rows.append((name, t, batch, r))
            print(f"{name} T={t} B={batch}: {r}", flush=True)
    print()
    print("| model | T | B | step ms | bytes/s | step GiB |")
    print("|---|---|---|---|---|---|")
    for name, t, b, r in rows:
        if "error" in r:
            print(f"| {name} | {t} | {b} | {r['error']} | - | - |")
        else:
            print(f"| {name} | {t} | {b} | {r['step_ms']:.1f} | {r['bytes_per_s']:,.0f} | {r['step_gib']:.1f} |")


if __name__ == "__main__":
    main()
