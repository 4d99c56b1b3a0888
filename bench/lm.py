"""Throughput of the byte LM: training bytes/s, model TFLOP/s and MFU on two bases -- the detected
GPU's spec dense bf16 peak (hqf_jax.trainer.mfu, "-" for an unknown part) and a bf16 matmul measured in
the same run -- and generation bytes/s at batch 1 and 64 through the recurrent form.

    python -m bench.lm [--config configs/lm_125m.py] [--seq-lens 2048,8192] [--forms chunkwise,pallas]
                       [--transformer]    # adds the matched transformer baseline (model.arch=transformer)
    python -m bench.lm --small        # tiny shapes, runs on a CPU

Timing: every figure is wall time around N jitted calls after warm-up, with block_until_ready
only at the end, so dispatch overlaps device work (N >= 10 steps, >= 20 matmuls).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from flax import nnx

from hqf_jax import cli
from hqf_jax.nn import generate
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM, count_params
from hqf_jax.nn.transformer import TransformerConfig, TransformerLM
from hqf_jax.trainer import mfu
from hqf_jax.trainer.timing import time_train_step


def bench_train(cfg, mcfg: RetNetConfig | TransformerConfig, seq_len: int, batch: int, steps: int):
    model_cls = TransformerLM if isinstance(mcfg, TransformerConfig) else RetNetLM
    return time_train_step(model_cls(mcfg, nnx.Rngs(0)), cfg.train, seq_len, batch, steps)


def bench_generate(mcfg: RetNetConfig, batch: int, n: int):
    model = RetNetLM(mcfg, nnx.Rngs(0))
    prompt = jnp.tile(jnp.asarray(generate.encode_prompt(b"def main():\n    "))[None], (batch, 1))
    out = generate.sample(model, prompt, n, jax.random.PRNGKey(0), temperature=1.0)
    out.block_until_ready()
    t = time.perf_counter()
    out = generate.sample(model, prompt, n, jax.random.PRNGKey(1), temperature=1.0)
    out.block_until_ready()
    return batch * n / (time.perf_counter() - t)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/lm_125m.py")
    p.add_argument("--seq-lens", default="2048,8192")
    p.add_argument("--bytes-per-step", type=int, default=65536)
    p.add_argument("--forms", default="chunkwise")
    p.add_argument("--chunk-sizes", default="64")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--gen-bytes", type=int, default=512)
    p.add_argument("--transformer", action="store_true", help="also time the matched transformer baseline")
    p.add_argument("--small", action="store_true", help="tiny shapes for a CPU check")
    a = p.parse_args(argv)
    cfg = cli.load_config_file(a.config)
    base = RetNetConfig.from_dict(cfg.model)
    seq_lens = [int(x) for x in a.seq_lens.split(",")]
    if a.small:
        base = RetNetConfig(d_model=64, num_layers=2, num_heads=2, qk_dim=64, v_dim=128, ffn_dim=192, chunk_size=16)
        seq_lens, a.bytes_per_step, a.steps, a.gen_bytes = [64, 128], 1024, 2, 16
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    peak = mfu.matmul_peak_tflops(256 if a.small else 8192, 2 if a.small else 50)
    spec = mfu.spec_part(dev.device_kind)
    print(f"bf16 matmul peak (same run): {peak:.1f} TFLOP/s; spec dense bf16 peak: "
          + (f"{spec[1]:.0f} TFLOP/s ({spec[0]})" if spec else "unknown part"))
    spec_peak = spec[1] if spec else None
    rows = []
    for form in a.forms.split(","):
        for chunk in (int(c) for c in a.chunk_sizes.split(",")):
            mcfg = RetNetConfig(**{**base.__dict__, "form": form, "chunk_size": chunk})
            for t in seq_lens:
                batch = max(1, a.bytes_per_step // t)
                try:
                    r = bench_train(cfg, mcfg, t, batch, a.steps)
                except Exception as e:  # report and go on: one failing variant must not hide the others
                    print(f"train {form} c={chunk} T={t}: FAILED {type(e).__name__}: {str(e)[:300]}")
                    continue
                rows.append((f"train {form} c={chunk}", t, batch, r))
                print(f"train {form} c={chunk} T={t} B={batch}: {r}", flush=True)
    if a.transformer:
        tcfg = TransformerConfig.matching(base)  # attention_impl auto: cuDNN on a GPU in bf16
        for t in seq_lens:
            batch = max(1, a.bytes_per_step // t)
            try:
                r = bench_train(cfg, tcfg, t, batch, a.steps)
            except Exception as e:
                print(f"train transformer T={t}: FAILED {type(e).__name__}: {str(e)[:300]}")
                continue
            rows.append(("train transformer", t, batch, r))
            print(f"train transformer T={t} B={batch}: {r}", flush=True)
    gen = {b: bench_generate(base, b, a.gen_bytes) for b in (1, 64)}
    print()
    spec_head = f"MFU vs spec {spec_peak:.0f}" if spec_peak else "MFU vs spec (unknown part)"
    print(f"| run | T | B | step ms | bytes/s | model TFLOP/s | {spec_head} | MFU vs measured {peak:.0f} | step GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, t, b, r in rows:
        m = mfu.mfu_metrics(r["tflops"], {"spec_tflops": spec_peak, "measured_tflops": peak})
        spec_cell = f"{100 * m['mfu_spec']:.1f}%" if "mfu_spec" in m else "-"
        print(f"| {name} | {t} | {b} | {r['step_ms']:.1f} | {r['bytes_per_s']:,.0f} | {r['tflops']:.1f} | "
              f"{spec_cell} | {100 * m['mfu_measured']:.1f}% | {r['step_gib']:.1f} |")
    print(f"params: {rows[0][3]['params'] if rows else count_params(RetNetLM(base, nnx.Rngs(0))):,}")
    for b, v in gen.items():
        print(f"| generate batch {b} | {v:,.0f} bytes/s |")


if __name__ == "__main__":
    main()
