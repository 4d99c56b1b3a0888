"""Sweep of the Hopper (Mosaic GPU) quantized matmul (pallas_kernels/quant/mosaic.py) beside the same-run bf16 XLA
matmul, the read floor of the Mosaic weight's bytes and the kernel the ROUTES table picks today (Triton-backend
GEMV / tensor-core forms, quant_matmul without blocks), on one weight per (shape, method), in one process.

    python -m bench.quant_mosaic [--shapes 4096x11008,4096x4096,11008x4096] [--methods int4,nf4]
                                 [--batches 1,4,8,16,32,64,256] [--budget-s 360]
    python -m bench.quant_mosaic --methods nf4,nf4+shuffled    # both layouts of the NF4 weight, one process

Hopper only (Mosaic GPU lowers for sm_90a); elsewhere it says so and exits 2. For each cell every Mosaic config
(the weight's plan, its value-accumulator variant, and the three next rows-per-warpgroup x groups-per-step forms
by the plan's cost model at their best split_k) is first checked against the jnp reference (dequantize -> bf16 ->
matmul) with the bf16-rounding bound of hqf_jax/quant/kernel_timing.py; one that fails is listed, never timed or
reported best. Timing: kernel_timing.time_for (fori_loop in one jit, L2-defeating weight copies, null loop
subtracted). With --keep K (default 2) a weight's later batches try only the plan and the K fastest configs of the
batch before (a config is about 2.5 s of compile, check and timing on an H200). Speed-up = t_bf16 / t. Ideal
(memory-bound) = bf16 bytes / quantized bytes (scales included). The last lines are the best passing Mosaic config
per cell; the dispatcher's first level (pallas_kernels/quant/layout_table.py, LAYOUTS) is written from these sweeps.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp

from hqf_jax import quant as Q
from hqf_jax.ops.quant_matmul import bf16_matmul, dequant_matmul_ref
from hqf_jax.quant.kernel_timing import (bf16_copies, check, hopper_weights, method_layout, mosaic_cfg_str,
                                         mosaic_configs, require_hopper, time_floor, time_for, tolerance)
from pallas_kernels.quant import quant_matmul
from pallas_kernels.quant import mosaic as M


def row_md(row) -> str:
    shape, name, b, t16, floor, tr, best, ideal = row  # best: (resolved config string, seconds) or None
    mb = (f"{best[0]} | {best[1] * 1e6:.1f} | {t16 / best[1]:.2f}x" if best
          else "FAIL | - | -")
    return (f"| {shape} | {name} | {b} | {t16 * 1e6:.1f} | {floor * 1e6:.1f} | {tr * 1e6:.1f} ({t16 / tr:.2f}x) | "
            f"{mb} | {ideal:.2f}x |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4096x11008,4096x4096,11008x4096")
    ap.add_argument("--methods", default="int4,nf4")
    ap.add_argument("--batches", default="1,4,8,16,32,64,256")
    ap.add_argument("--target-s", type=float, default=0.05)
    ap.add_argument("--shuffle", action="store_true", help="NF4 / phi4 weights with their codes in the "
                    "lookup's column order (prepare_mosaic(shuffle=True): no relayout in the kernel)")
    ap.add_argument("--budget-s", type=float, default=360.0)
    ap.add_argument("--no-routes", action="store_true", help="skip the ROUTES (Triton) kernel column")
    ap.add_argument("--keep", type=int, default=2, help="after a weight's first batch, try only the plan and the "
                    "KEEP fastest configs of the batch before (0: every config at every batch)")
    a = ap.parse_args(argv)
    if require_hopper("bench.quant_mosaic") is None:
        return 2
    t0, rows, best_rows = time.perf_counter(), [], []
    for shape in a.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        w = jax.random.normal(jax.random.key(0), (k, n), jnp.float32) * 0.02
        w16s = bf16_copies(w)
        for token in a.methods.split(","):
            method, shuffled, label = method_layout(token, a.shuffle)
            q = Q.quantize(w, method)
            hw = hopper_weights(q, shuffled)
            pw, mw, wm, mws, pws, floor_ws = (hw[key] for key in ("pw", "mw", "wm", "mws", "pws", "floor_ws"))
            ideal = k * n * 2 / mw.nbytes
            floor = None
            ranked = None  # configs of the previous batch, fastest first
            for b in (int(v) for v in a.batches.split(",")):
                if time.perf_counter() - t0 > a.budget_s:
                    print(f"{shape} {label} b={b}: left out (past --budget-s)", flush=True)
                    continue
                x = jax.random.normal(jax.random.key(b), (b, k)).astype(jnp.bfloat16)
                ref = dequant_matmul_ref(x, wm)
                bound = tolerance(x, wm, ref)
                t16, _ = time_for(bf16_matmul, x, w16s, n, a.target_s, False)
                if floor is None:  # reads the weight's bytes and x[:, :1] only: once per weight
                    floor = time_floor(x, floor_ws, n, a.target_s, False)
                t_route = float("nan")
                if not a.no_routes:
                    ok, _ = check(quant_matmul(x, pw), ref, x, wm, bound)
                    t_route = time_for(quant_matmul, x, pws, n, a.target_s, False)[0] if ok else float("nan")
                best, timed, seen = None, [], set()
                cands = mosaic_configs(mw)
                if a.keep and ranked:
                    # the plan, the K fastest before, and both pad_x forms (whose meaning moves at batch 8)
                    cands = [c for c in cands if c == cands[0] or c in ranked[:a.keep] or c.pad_x is not None]
                for c in cands:
                    if (cs := mosaic_cfg_str(c, mw, b)) in seen:  # the same form at this batch (pad_x's default)
                        continue
                    seen.add(cs)
                    op = lambda x, m, c=c: M.mosaic_matmul(x, m, c)  # noqa: E731
                    try:
                        ok, rel = check(jax.jit(op)(x, mw), ref, x, wm, bound)
                        if not ok:
                            print(f"  {shape} {label} b={b} {mosaic_cfg_str(c, mw, b)}: FAILS its check "
                                  f"(rel {rel:.1e})")
                            continue
                        t, _ = time_for(op, x, mws, n, a.target_s, False)
                    except Exception as e:  # noqa: BLE001 -- a config Mosaic rejects must not end the sweep
                        print(f"  {shape} {label} b={b} {c}: FAILED {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}", flush=True)
                        continue
                    print(f"  {shape} {label} b={b} {mosaic_cfg_str(c, mw, b)}: {t * 1e6:.1f} us "
                          f"(bf16 {t16 * 1e6:.1f}, floor {floor * 1e6:.1f})", flush=True)
                    timed.append((t, c))
                    if best is None or t < best[1]:
                        best = (c, t)
                ranked = [c for _, c in sorted(timed, key=lambda tc: tc[0])]
                rows.append((shape, label, b, t16, floor, t_route,
                             (mosaic_cfg_str(best[0], mw, b), best[1]) if best else None, ideal))
                print("ROW " + row_md(rows[-1]), flush=True)
                if best:
                    best_rows.append((shape, label, b, mosaic_cfg_str(best[0], mw, b), t16 / best[1]))
    print("\n| shape KxN | method | batch | bf16 µs | read floor µs | ROUTES µs (x bf16) | Mosaic best | µs | "
          "x bf16 | ideal |\n|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row_md(row))
    print("\nbest passing Mosaic config per cell:")
    for shape, method, b, c, sp in best_rows:
        print(f"    ({shape!r}, {method!r}, {b}, {c!r}),  # {sp:.2f}x bf16")
    print(f"\nsweep wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
