"""Throughput of the byte LM: training bytes/s, model TFLOP/s and MFU against a bf16 matmul
measured in the same run, and generation bytes/s at batch 1 and 64 through the recurrent form.

    python -m bench.lm [--config configs/lm_125m.py] [--seq-lens 2048,8192] [--forms chunkwise,pallas]
    python -m bench.lm --small        # tiny shapes, runs on a CPU

Timing: every figure is wall time around N jitted calls after warm-up, with block_until_ready
only at the end, so dispatch overlaps device work (N >= 10 steps, >= 20 matmuls).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax import cli
from hqf_jax.nn import generate
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM, count_params
from hqf_jax.trainer.lm_task import model_flops_per_byte, next_byte_loss
from hqf_jax.trainer.loop import _train_state, make_train_step
from hqf_jax.trainer.optim import make_optimizer


def matmul_peak(n: int, reps: int) -> float:
    """bf16 TFLOP/s of an n x n x n matmul, reps chained inside one jitted loop."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16) / n

    @jax.jit
    def loop(a):
        return jax.lax.fori_loop(0, reps, lambda i, x: (x @ b).astype(jnp.bfloat16), a)

    loop(a).block_until_ready()
    t = time.perf_counter()
    loop(a).block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def bench_train(cfg, mcfg: RetNetConfig, seq_len: int, batch: int, steps: int):
    model = RetNetLM(mcfg, nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, schedule = make_optimizer(cfg.train)
    state = _train_state(params, tx.init(params), 0)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (batch, seq_len + 1), dtype=np.int32)
    b = {"inputs": jnp.asarray(data[:, :-1]), "targets": jnp.asarray(data[:, 1:])}
    step = jax.jit(make_train_step(next_byte_loss, graphdef, tx, schedule, 0), donate_argnums=(0,))
    step = step.lower(state, rest, b).compile()
    ma = step.memory_analysis()
    # device memory the step needs: its arguments (state, batch) plus XLA's temporaries, from the compiler
    step_gib = ((ma.argument_size_in_bytes + ma.temp_size_in_bytes) / 2**30) if ma is not None else float("nan")
    state, m = step(state, rest, b)  # warm-up
    state, m = step(state, rest, b)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, rest, b)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t) / steps
    bytes_per_s = batch * seq_len / dt
    tflops = model_flops_per_byte(mcfg, seq_len) * bytes_per_s / 1e12
    return {"step_ms": dt * 1e3, "bytes_per_s": bytes_per_s, "tflops": tflops,
            "step_gib": step_gib, "params": count_params(model), "loss": float(m["loss"])}


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
    peak = matmul_peak(256 if a.small else 8192, 2 if a.small else 50)
    print(f"bf16 matmul peak (same run): {peak:.1f} TFLOP/s")
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
    gen = {b: bench_generate(base, b, a.gen_bytes) for b in (1, 64)}
    print()
    print(f"| run | T | B | step ms | bytes/s | model TFLOP/s | MFU vs {peak:.0f} | step GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, t, b, r in rows:
        print(f"| {name} | {t} | {b} | {r['step_ms']:.1f} | {r['bytes_per_s']:,.0f} | {r['tflops']:.1f} | "
              f"{100 * r['tflops'] / peak:.1f}% | {r['step_gib']:.1f} |")
    print(f"params: {rows[0][3]['params'] if rows else count_params(RetNetLM(base, nnx.Rngs(0))):,}")
    for b, v in gen.items():
        print(f"| generate batch {b} | {v:,.0f} bytes/s |")


if __name__ == "__main__":
    main()
