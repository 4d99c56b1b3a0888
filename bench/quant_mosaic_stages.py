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
                                        [--methods nf4,nf4+shuffled: both layouts in one process]
                                        [--trace] [--sweep 3 --sweep-stages 2,3,4]

--trace: the kernels one call of the full op launches (the Mosaic kernel, the x padding, the split-K sum), each
one's µs per call from a profiler trace of the timing loop (kernel_timing.trace_op): what the copy probe's time
over the floor is made of. --sweep N: the copy and full probes again for the plan, the value accumulator and the
N next (rows x groups x split) forms at each pipeline depth of --sweep-stages: whether some other form streams
nearer the floor.

Hopper only (Mosaic GPU lowers for sm_90a); elsewhere it says so and exits 2 (tests/test_quant_mosaic.py traces
the probes on a CPU). Timing: kernel_timing.time_for (fori_loop in one jit, L2-defeating weight copies, null loop
subtracted).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import jax
import jax.numpy as jnp

from hqf_jax import quant as Q
from hqf_jax.ops.quant_matmul import bf16_matmul, dequant_matmul_ref
from hqf_jax.quant.kernel_timing import (bf16_copies, check, hopper_weights, method_layout, mosaic_cfg_str,
                                         mosaic_configs, require_hopper, time_floor, time_for, tolerance, trace_op)
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


def print_trace(shape, name, b, x, mws) -> None:
    try:
        r = trace_op(lambda x, m: M.mosaic_matmul(x, m), x, mws, 200)
    except Exception as e:  # noqa: BLE001 - the probe rows stand without the trace
        print(f"  trace {shape} {name} b={b}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
        return
    print(f"  trace {shape} {name} b={b}: per call wall {r['wall_us']:.1f} µs, busy {r['busy_us']:.1f} µs, "
          f"{r['events_per_step']:.1f} kernels ({r['source']})", flush=True)
    for k in r["top"]:
        print(f"  trace {shape} {name} b={b}:   {k['per_step']:.2f} x {k['mean_us']:.2f} µs  {k['name'][:90]}",
              flush=True)


def sweep(shape, name, b, x, mw, mws, floor, ok_full, a) -> None:
    """Copy and full probe times of other forms; a form whose full product fails ok_full is not timed."""
    seen = set()
    for c in mosaic_configs(mw, a.sweep):
        for st in (int(v) for v in a.sweep_stages.split(",")):
            c2 = dataclasses.replace(c, stages=st)
            try:
                cs = mosaic_cfg_str(c2, mw, b)
                if cs in seen:
                    continue
                seen.add(cs)
                if not ok_full(M.mosaic_matmul_jit(x, mw, c2)):
                    print(f"  sweep {shape} {name} b={b} {cs}: FAILS its check; not timed", flush=True)
                    continue
                ts = {}
                for probe in ("copy", "full"):
                    cp = dataclasses.replace(c2, probe="none" if probe == "full" else probe)
                    op = lambda x, m, c=cp: M.mosaic_matmul(x, m, c)  # noqa: E731
                    ts[probe] = time_for(op, x, mws, mw.shape[0], a.target_s, False)[0]
            except Exception as e:  # noqa: BLE001 - a form Mosaic or shared memory refuses: the sweep goes on
                print(f"  sweep {shape} {name} b={b} {c} st{st}: FAILED {type(e).__name__}: "
                      f"{str(e).splitlines()[0][:160] if str(e) else ''}", flush=True)
                continue
            print(f"  sweep {shape} {name} b={b} {cs}: copy {ts['copy'] * 1e6:.1f} µs ({ts['copy'] / floor:.2f}x "
                  f"floor), full {ts['full'] * 1e6:.1f} µs", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4096x11008,11008x4096")
    ap.add_argument("--methods", default="int4,nf4")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--target-s", type=float, default=0.03)
    ap.add_argument("--shuffle", action="store_true", help="NF4 / phi4 weights with their codes in the "
                    "lookup's column order (prepare_mosaic(shuffle=True): no relayout in the kernel)")
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--trace", action="store_true", help="the kernels of one full call, from a profiler trace")
    ap.add_argument("--sweep", type=int, default=0, help="copy and full probes of the plan and N other forms")
    ap.add_argument("--sweep-stages", default="2,3,4", help="pipeline depths of the --sweep forms")
    a = ap.parse_args(argv)
    if require_hopper("bench.quant_mosaic_stages") is None:
        return 2
    t0, lines = time.perf_counter(), []
    for shape in a.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        w = jax.random.normal(jax.random.key(0), (k, n), jnp.float32) * 0.02
        w16s = bf16_copies(w)
        for token in a.methods.split(","):
            method, shuffled, label = method_layout(token, a.shuffle)
            q = Q.quantize(w, method)
            hw = hopper_weights(q, shuffled)
            mw, wm, mws, floor_ws = hw["mw"], hw["wm"], hw["mws"], hw["floor_ws"]
            for b in (int(v) for v in a.batches.split(",")):
                if time.perf_counter() - t0 > a.budget_s:
                    print(f"{shape} {label} b={b}: left out (past --budget-s)", flush=True)
                    continue
                x = jax.random.normal(jax.random.key(b), (b, k)).astype(jnp.bfloat16)
                ref = dequant_matmul_ref(x, wm)
                ok, rel = check(M.mosaic_matmul_jit(x, mw), ref, x, wm, tolerance(x, wm, ref))
                if not ok:
                    print(f"{shape} {label} b={b}: the kernel FAILS its check (rel {rel:.1e}); not timed", flush=True)
                    continue
                t = {"bf16": time_for(bf16_matmul, x, w16s, n, a.target_s, False)[0],
                     "floor": time_floor(x, floor_ws, n, a.target_s, False)}
                for probe in PROBES:
                    blocks = M.MosaicBlocks(probe="none" if probe == "full" else probe)
                    op = lambda x, m, c=blocks: M.mosaic_matmul(x, m, c)  # noqa: E731
                    t[probe] = time_for(op, x, mws, n, a.target_s, False)[0]
                lines.append(row_md(shape, label, b, t, stage_row(t)))
                print("ROW " + lines[-1], flush=True)
                if a.trace:
                    print_trace(shape, label, b, x, mws)
                if a.sweep:
                    bound = tolerance(x, wm, ref)
                    sweep(shape, label, b, x, mw, mws, t["floor"],
                          lambda y: check(y, ref, x, wm, bound)[0], a)
    print("\n" + HEADER)
    print("\n".join(lines))
    print(f"\nstage probe wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
