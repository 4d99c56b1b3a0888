"""Stage probe of the Hopper quantized matmul (pallas_kernels/quant/mosaic.py): where a step's time goes. For each
(shape, method, batch), on the weight's own plan and in one process:

    full       the kernel as shipped (checked against the jnp reference first; a failing kernel is not timed)
    no_decode  copies + wgmma + waits, wgmma fed a constant register tile (no shared-memory load of the codes, no
               int4 -> bf16 convert, no NF4 lookup, no scale)
    copy       the pipeline's copies and barriers only (an empty compute step)
    floor      one XLA reduction over the Hopper weight's bytes (kernel_timing.time_floor)
    bf16       the same-run bf16 XLA matmul

so that decode = full - no_decode, tensor-core issue and wait = no_decode - copy, and copy / floor says whether the
copy pipeline itself streams at the read floor.

    python -m bench.quant_mosaic_stages [--shapes 4096x11008,11008x4096] [--methods int4,nf4] [--batches 1,16,64]

Hopper only (Mosaic GPU lowers for sm_90a); elsewhere it says so and exits 2 (tests/test_quant_mosaic.py traces
the probes on a CPU). Timing: kernel_timing.time_for (fori_loop in one jit, L2-defeating weight copies, null loop
subtracted).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp

from hqf_jax import quant as Q
from hqf_jax.ops.quant_matmul import bf16_matmul, dequant_matmul_ref
from hqf_jax.quant.kernel_timing import (bf16_copies, check, hopper_weights, require_hopper, time_floor, time_for,
                                         tolerance)
from pallas_kernels.quant import mosaic as M

PROBES = ("full", "no_decode", "copy")


def stage_row(times: dict) -> dict:
    """Derived stage costs (seconds) from the probe times: decode, tensor cores (issue + wait), copy, and the
    copy pipeline over the read floor."""
    return dict(decode=times["full"] - times["no_decode"], tensor=times["no_decode"] - times["copy"],
                copy=times["copy"], copy_over_floor=times["copy"] / times["floor"],
                full_over_floor=times["full"] / times["floor"], x_bf16=times["bf16"] / times["full"])


def row_md(shape, method, b, t, d) -> str:
    us = lambda v: f"{v * 1e6:.1f}"  # noqa: E731
    return (f"| {shape} | {method} | {b} | {us(t['bf16'])} | {us(t['floor'])} | {us(t['full'])} ({d['x_bf16']:.2f}x)"
            f" | {us(t['no_decode'])} | {us(t['copy'])} | {us(d['decode'])} | {us(d['tensor'])} | "
            f"{d['copy_over_floor']:.2f} | {d['full_over_floor']:.2f} |")


HEADER = ("| shape KxN | method | batch | bf16 µs | floor µs | full µs (x bf16) | no_decode µs | copy µs | "
          "decode µs | tensor µs | copy / floor | full / floor |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4096x11008,11008x4096")
    ap.add_argument("--methods", default="int4,nf4")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--target-s", type=float, default=0.03)
    ap.add_argument("--budget-s", type=float, default=300.0)
    a = ap.parse_args(argv)
    if require_hopper("bench.quant_mosaic_stages") is None:
        return 2
    t0, lines = time.perf_counter(), []
    for shape in a.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        w = jax.random.normal(jax.random.key(0), (k, n), jnp.float32) * 0.02
        w16s = bf16_copies(w)
        for method in a.methods.split(","):
            q = Q.quantize(w, method)
            hw = hopper_weights(q)
            mw, wm, mws, floor_ws = hw["mw"], hw["wm"], hw["mws"], hw["floor_ws"]
            for b in (int(v) for v in a.batches.split(",")):
                if time.perf_counter() - t0 > a.budget_s:
                    print(f"{shape} {method} b={b}: left out (past --budget-s)", flush=True)
                    continue
                x = jax.random.normal(jax.random.key(b), (b, k)).astype(jnp.bfloat16)
                ref = dequant_matmul_ref(x, wm)
                ok, rel = check(M.mosaic_matmul_jit(x, mw), ref, x, wm, tolerance(x, wm, ref))
                if not ok:
                    print(f"{shape} {method} b={b}: the kernel FAILS its check (rel {rel:.1e}); not timed", flush=True)
                    continue
                t = {"bf16": time_for(bf16_matmul, x, w16s, n, a.target_s, False)[0],
                     "floor": time_floor(x, floor_ws, n, a.target_s, False)}
                for probe in PROBES:
                    blocks = M.MosaicBlocks(probe="none" if probe == "full" else probe)
                    op = lambda x, m, c=blocks: M.mosaic_matmul(x, m, c)  # noqa: E731
                    t[probe] = time_for(op, x, mws, n, a.target_s, False)[0]
                lines.append(row_md(shape, q.cfg.name, b, t, stage_row(t)))
                print("ROW " + lines[-1], flush=True)
    print("\n" + HEADER)
    print("\n".join(lines))
    print(f"\nstage probe wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
