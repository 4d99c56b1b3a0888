"""Probe: the Mosaic GPU backend's mixed-type matmul (int weights upcast to bf16 in registers, fed to wgmma; the
kernel JAX ships as jax.experimental.pallas.ops.gpu.hopper_mixed_type_matmul_mgpu) beside this repository's
Triton-backend tensor-core kernel (pallas_kernels/quant/tc.py through quant_matmul) and the bf16 XLA matmul, on
the same shapes and batches, in one process. It answers issue 22's "Mosaic GPU or Triton, whichever measures
faster" for the dot core before a Mosaic kernel with this project's group scales and packed format is written.

    python -m bench.quant_mosaic_probe [--shapes 4096x11008,11008x4096] [--batches 8,16,64] [--budget-s 240]

Hopper only (Mosaic GPU lowers for sm_90a); on anything else it says so and exits 2. The Mosaic rows are
int8 (and int4 where it lowers) weights with one scale per output channel, applied to the (N, B) product after
the kernel (one fused XLA op): the kernel computes y^T = W x^T with W (N out, K in) as the register operand and
x^T (K, B) from shared memory, so the batch is wgmma's N side (>= 8). The Triton rows are int8/g64 and int4/g64
(group scales inside the kernel) as the dispatcher routes them. Every timed op is first checked against its
reference (dequantized weight, float32 product) within bf16 rounding; one that fails is listed, never timed.
Timing: hqf_jax/quant/kernel_timing.py (fori_loop in one jit, L2-defeating weight copies, null loop subtracted).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp

from hqf_jax import quant as Q
from hqf_jax.ops.quant_matmul import bf16_matmul, dequant_matmul_ref
from hqf_jax.quant.kernel_timing import (bf16_weight, check, copies_for, copy_tree, require_hopper, time_for,
                                         tolerance)
from hqf_jax.quant.linear import prepare
from hqf_jax.quant.qtensor import dequantize_matrix
from pallas_kernels.quant import quant_matmul


def mosaic_configs(batch: int):
    """A few tunings per batch (the batch is the tile's N side: wgmma N >= 8; 2 warpgroups split M)."""
    from jax.experimental.pallas.ops.gpu import hopper_mixed_type_matmul_mgpu as mm

    tn = min(batch, 128)
    return [mm.TuningConfig(tile_m=tm, tile_n=tn, tile_k=tk, max_concurrent_steps=4, epi_tile_n=tn, epi_tile_m=64,
                            grid_minor_dim=mm.MatmulDimension.M, grid_tile_width=4,
                            wg_dimension=mm.MatmulDimension.M)
            for tm in (64, 128) for tk in (64, 128)]


def mosaic_op(config):
    from jax.experimental.pallas.ops.gpu import hopper_mixed_type_matmul_mgpu as mm

    def op(x, w):
        wq, s = w
        yt = mm.mixed_matmul_kernel(wq, x.T, out_dtype=jnp.bfloat16, config=config)
        return (yt.astype(jnp.float32) * s[:, None]).T.astype(jnp.bfloat16)
    return op


def per_channel(w, dtype, levels: int):
    """(N, K) integer weight in ``dtype``, (N,) float32 scales and the dequantized (N, K) matrix (the reference's
    orientation, as dequantize_matrix) of a (K, N) float weight; symmetric, one scale per output."""
    s = jnp.max(jnp.abs(w), axis=0) / levels
    q = jnp.clip(jnp.round(w / s), -levels, levels).T  # (N, K)
    return q.astype(jnp.int8).astype(dtype), s, q * s[:, None]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4096x11008,11008x4096")
    ap.add_argument("--batches", default="8,16,64")
    ap.add_argument("--target-s", type=float, default=0.08)
    ap.add_argument("--budget-s", type=float, default=240.0)
    a = ap.parse_args(argv)
    if require_hopper("bench.quant_mosaic_probe") is None:
        return 2
    t0, rows = time.perf_counter(), []
    for shape in a.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        w = jax.random.normal(jax.random.key(0), (k, n), jnp.float32) * 0.02
        forms = {}
        for name, dt, lv in (("mosaic int8/channel", jnp.int8, 127), ("mosaic int4/channel", jnp.int4, 7)):
            wq, s, wm = per_channel(w, dt, lv)
            nbytes = wq.size if lv > 7 else wq.size // 2
            forms[name] = ([(wq, s)] + [copy_tree((wq, s)) for _ in range(copies_for(nbytes, False) - 1)], wm)
        for spec in ("int8", "int4"):
            q = Q.quantize(w, spec)
            pw = prepare(q)
            forms[f"triton tc {q.cfg.name}"] = ([pw] + [copy_tree(pw) for _ in range(copies_for(pw.nbytes, False) - 1)],
                                                dequantize_matrix(q))
        w16 = bf16_weight(w)
        w16s = [w16] + [copy_tree(w16) for _ in range(copies_for(k * n * 2, False) - 1)]
        for b in (int(v) for v in a.batches.split(",")):
            if time.perf_counter() - t0 > a.budget_s:
                print(f"{shape} b={b}: left out (past --budget-s)")
                continue
            x = jax.random.normal(jax.random.key(b), (b, k)).astype(jnp.bfloat16)
            t16, _ = time_for(bf16_matmul, x, w16s, n, a.target_s, False)
            rows.append((shape, b, "bf16 XLA", "-", t16, t16))
            for name, (ws, wm) in forms.items():
                ref = dequant_matmul_ref(x, wm)
                bound = tolerance(x, wm, ref)
                ops = ([(str(c.tile_m) + "x" + str(c.tile_n) + "x" + str(c.tile_k), mosaic_op(c)) for c in mosaic_configs(b)]
                       if name.startswith("mosaic") else [("auto (ROUTES)", quant_matmul)])
                best = None
                for cfg, op in ops:
                    try:
                        ok, rel = check(op(x, ws[0]), ref, x, wm, bound)
                        if not ok:
                            print(f"  {shape} b={b} {name} {cfg}: FAILS its check (rel err {rel:.1e})")
                            continue
                        t, _ = time_for(op, x, ws, n, a.target_s, False)
                    except Exception as e:  # noqa: BLE001 -- a tuning Mosaic rejects must not end the probe
                        print(f"  {shape} b={b} {name} {cfg}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                        continue
                    print(f"  {shape} b={b} {name} {cfg}: {t * 1e6:.1f} us (bf16 {t16 * 1e6:.1f} us)", flush=True)
                    if best is None or t < best[1]:
                        best = (cfg, t)
                rows.append((shape, b, name, best[0] if best else "FAIL", best[1] if best else float("nan"), t16))
    print("\n| shape KxN | batch | form | best tiling | µs | bf16 µs | speed-up over bf16 |\n|---|---|---|---|---|---|---|")
    for shape, b, name, cfg, t, t16 in rows:
        print(f"| {shape} | {b} | {name} | {cfg} | {t * 1e6:.1f} | {t16 * 1e6:.1f} | {t16 / t:.2f}x |")
    print(f"\nprobe wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
