"""Benchmark of the quantized matmul kernels beside a bf16 XLA matmul of the same shape, in one process.

    python -m bench.quant_kernels                 # GPU: 4096x4096, 4096x11008, 11008x4096; batch 1-256;
                                                  # int4, nf4, phi5u8; paced to finish in --budget-s (300 s)
    python -m bench.quant_kernels --small         # CPU: tiny shapes in Pallas interpret mode (checks only)

For each weight (K in, N out), method and batch (default 1, 4, 8, 16, 32, 64, 256) it
  1. quantizes a random N(0, 0.02) weight, packs it (PackedWeight), counts its bits per weight from the bytes;
  2. times the bf16 XLA matmul of the same shape and the read floor (one XLA reduction over the packed bytes);
  3. for each block config of the sweep: checks the kernel against its jnp reference (dequantize -> bf16 ->
     matmul) with a bf16-rounding bound, and times it;
  4. keeps the fastest config AMONG THOSE THAT PASS THE CHECK (a config that fails is listed, never reported as
     the best; a row with no passing config says FAIL).
Configs per cell are tried most promising first (int / NF4 at batch >= 8: the tensor-core form "tc" of
pallas_kernels/quant/tc.py); with --budget-s the sweep is paced: once a cell has a passing config and the run is
behind its share of the budget, the cell's remaining configs are skipped (counted in the "skip" column); past the
budget + 25 s the remaining cells are left out (printed as such, shown "-" in the last table). The last
lines are the best config per (shape, method, batch) written as dispatch.Route rows for pallas_kernels/quant/
dispatch.py's ROUTES table.
Timing on device (hqf_jax/quant/kernel_timing.py): fori_loop in one jit, L2-defeating weight copies, null-loop
overhead subtracted. Speed-up = t_bf16 / t_kernel; the memory-bound ideal is 16 / bits_per_weight (scales
included); the table shows achieved / ideal. At large batch the product is no longer memory-bound, so the ideal
is an upper bound only. The last table is the speed-up over bf16 per batch (a "<" marks a kernel slower than bf16).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
import traceback

import jax
import jax.numpy as jnp
from tqdm import tqdm

from hqf_jax import quant as Q
from hqf_jax.ops.quant_matmul import bf16_matmul, dequant_matmul_ref
from hqf_jax.quant.kernel_sweep import cfg_str as _cfg_str
from hqf_jax.quant.kernel_sweep import fits as _fits
from hqf_jax.quant.kernel_sweep import sweep_configs
from hqf_jax.quant.kernel_timing import bf16_weight, check, copies_for, copy_tree, time_floor, time_for, tolerance
from hqf_jax.quant.linear import placeholder, prepare
from hqf_jax.quant.qtensor import dequantize_matrix
from pallas_kernels.quant import BlockConfig, GatherBlockConfig, default_blocks, gather_matmul, quant_matmul
from pallas_kernels.quant.gemv import supports_vec

SHAPES = "4096x11008,4096x4096,11008x4096"  # the aim shape first (the sweep is paced)
BATCHES = "1,4,8,16,32,64,256"
METHODS = {  # label -> (quant spec, kernel)
    "phi5u8": ("phi5u8", "fused"),
    "int4": ("int4", "fused"),
    "nf4": ("nf4", "fused"),
    "nf4dq": ("nf4dq", "fused"),
    "int8": ("int8", "fused"),
    "gather-phi5u8": ("phi5u8:sort=true", "gather"),
}


def pick_best(trials: list[tuple]):
    """The fastest of (seconds, raw seconds, config, ok, rel error) trials among those whose check passed; None
    when none passed."""
    passing = [t for t in trials if t[3]]
    return min(passing, key=lambda t: t[0]) if passing else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny shapes in interpret mode (CPU check)")
    ap.add_argument("--shapes", default=None, help=f"comma list of KxN (default {SHAPES})")
    ap.add_argument("--batches", default=None, help=f"comma list (default {BATCHES})")
    ap.add_argument("--methods", default="int4,nf4,phi5u8", help=f"comma list of {sorted(METHODS)}")
    ap.add_argument("--sweep", default="small", choices=["none", "small", "full"])
    ap.add_argument("--target-s", type=float, default=0.1, help="device seconds per timing")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="pace the sweep to about this many seconds (0: try every config)")
    ap.add_argument("--lower-only", action="store_true",
                    help="on any machine: lower every (shape, method, batch, block config) to Triton for CUDA and stop")
    args = ap.parse_args(argv)
    if args.lower_only:
        return lower_only(args)

    interpret = args.small
    shapes = args.shapes or ("256x256,256x512" if args.small else SHAPES)
    batches = [int(b) for b in (args.batches or ("1,16" if args.small else BATCHES)).split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in shapes.split(",")]
    methods = args.methods.split(",")
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}: use {sorted(METHODS)}")
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}); interpret={interpret}; jax {jax.__version__}")
    rows, best_cfgs = [], []
    jobs = [(s, m) for s in shapes for m in methods]
    n_cells, cell, t_start = len(jobs) * len(batches), 0, time.perf_counter()
    t16_cache: dict = {}
    for (k, n), label in tqdm(jobs, desc="bench"):
        spec, kind = METHODS[label]
        w = jax.random.normal(jax.random.key(0), (k, n), jnp.float32) * 0.02
        q = Q.quantize(w, spec)
        pw = prepare(q)
        bpw = pw.nbytes * 8 / (k * n)
        assert abs(bpw - Q.bits_per_weight(q)) < 1e-9
        wm = dequantize_matrix(q)
        copies = copies_for(pw.nbytes, interpret)
        pws = [pw] + [copy_tree(pw) for _ in range(copies - 1)]
        # the read floor: one XLA reduction over a random buffer of the packed weight's bytes (same copies)
        floor_ws = [jax.random.bits(jax.random.key(100 + c), (pw.nbytes // 4,), jnp.uint32) for c in range(copies)]
        tc = {"int": "int", "nf4": "nf4"}.get(q.cfg.method, False)
        tfloor = None
        for b in batches:
            if args.budget_s and time.perf_counter() - t_start > args.budget_s + 25:
                cell += 1  # hard stop: the run must end near its budget; the cell is left out of the tables
                tqdm.write(f"  {label} {k}x{n} b={b}: left out, the sweep is past --budget-s + 25 s")
                continue
            x = jax.random.normal(jax.random.key(b), (b, k)).astype(jnp.bfloat16)
            ref = dequant_matmul_ref(x, wm)
            bound = tolerance(x, wm, ref)  # the check's bound, once per cell
            # interpret mode: the times only exercise the timing path; they say nothing about the kernel
            if (k, n, b) not in t16_cache:  # the bf16 baseline once per (shape, batch), shared by the methods
                w16 = bf16_weight(w)
                w16s = [w16] + [copy_tree(w16) for _ in range(copies_for(k * n * 2, interpret) - 1)]
                t16_cache[(k, n, b)] = time_for(bf16_matmul, x, w16s, n, args.target_s, interpret)
                del w16s
            t16, t16raw = t16_cache[(k, n, b)]
            if tfloor is None:  # the floor reads the weight bytes and x[:, :1] only: once per weight
                tfloor = time_floor(x, floor_ws, n, args.target_s, interpret)
            trials = []
            cfgs = [c for c in sweep_configs(kind, b, args.sweep, spec.startswith(("phi", "e5")), tc, pw)
                    if _fits(pw, c)]
            if not cfgs:
                cfgs = [default_blocks(pw, b) if kind == "fused" else GatherBlockConfig(split_k=1)]
            cell += 1
            n_skip = 0
            for cfg in cfgs:
                behind = time.perf_counter() - t_start > args.budget_s * cell / n_cells
                if args.budget_s and behind and any(t[3] for t in trials):
                    n_skip += 1  # paced: this cell has a passing config and the run is behind its budget
                    continue
                fn = (lambda x, p, cfg=cfg: quant_matmul(x, p, blocks=cfg, interpret=interpret)) if kind == "fused" else (
                    lambda x, p, cfg=cfg: gather_matmul(x, p, blocks=cfg, interpret=interpret))
                try:
                    ok, rel = check(fn(x, pw), ref, x, wm, bound)
                    t, traw = time_for(fn, x, pws, n, args.target_s, interpret) if ok else (float("nan"),) * 2
                except Exception as e:  # a block config Triton rejects must not end the run
                    print(f"  {label} {k}x{n} b={b} {cfg}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                    if args.small:
                        traceback.print_exc()
                    continue
                tqdm.write(f"    {label} {k}x{n} b={b} {_cfg_str(cfg)}: "
                           + (f"{t * 1e6:.1f} us" if ok else f"FAILS its check (rel err {rel:.1e}), not timed"))
                trials.append((t, traw, cfg, ok, rel))
            n_bad = sum(not t[3] for t in trials)
            best = pick_best(trials)
            if best is None:
                rel = min((t[4] for t in trials), default=float("nan"))
                rows.append((f"{k}x{n}", b, label, bpw, pw.nbytes, t16, float("nan"), float("nan"), "-", False, rel,
                             t16raw, tfloor, n_bad, n_skip))
                tqdm.write(f"  {label} {k}x{n} b={b}: no config passed its check ({n_bad} failed)")
                continue
            t, traw, cfg, ok, rel = best
            rows.append((f"{k}x{n}", b, label, bpw, pw.nbytes, t16, t, traw, _cfg_str(cfg), ok, rel, t16raw, tfloor,
                         n_bad, n_skip))
            if isinstance(cfg, BlockConfig):  # the form it ran as (mode "auto" resolved the way quant_matmul does)
                cfg = dataclasses.replace(cfg, mode=cfg.resolved_mode(b, supports_vec(pw, cfg.block_k)))
            best_cfgs.append((q.cfg.method, k, n, b, cfg, t16 / t))
            tqdm.write(f"  {label} {k}x{n} b={b}: kernel {t * 1e6:.1f} us, bf16 {t16 * 1e6:.1f} us, "
                       f"speed-up {t16 / t:.2f} (ideal {16 / bpw:.2f}), ok {_cfg_str(cfg)}")
    print_tables(rows, interpret)
    print_cells(rows)
    print_routes(best_cfgs)
    print(f"\nsweep wall time {time.perf_counter() - t_start:.0f} s (budget {args.budget_s:.0f} s)")


def print_tables(rows: list[tuple], interpret: bool) -> None:
    print("\nTiming: on device, fori_loop in one jit, L2-defeating weight copies, null-loop overhead subtracted.")
    print("floor = one XLA reduction over a random buffer of the packed weight's bytes: the time to stream them in "
          "one kernel at this size; kern/floor = kernel us / floor us (1.0 = as fast as reading the bytes).")
    print("best blocks = the fastest config that passed its check; bad = configs that failed it (never picked).")
    if interpret:
        print("INTERPRET MODE (CPU): the checks are real, the times only exercise the timing code.")
    hdr = (f"{'KxN':>11} {'B':>4} {'method':>14} {'bits':>6} {'MB':>7} {'bf16 us':>8} {'kern us':>8} {'raw us':>7} "
           f"{'speedup':>7} {'ideal':>6} {'ach/ideal':>9} {'GB/s':>6} {'floor us':>8} {'k/floor':>7} {'check':>6} "
           f"{'rel err':>8} {'bad':>3} {'skip':>4}  best blocks")
    print(hdr)
    for r in rows:
        shape, b, label, bpw, nbytes, t16, t, traw, cfg, ok, rel, _, tfloor, n_bad, n_skip = r
        sp = t16 / t if t and not math.isnan(t) else float("nan")
        ideal = 16.0 / bpw
        gbs = nbytes / t / 1e9 if t and not math.isnan(t) else float("nan")
        print(f"{shape:>11} {b:>4} {label:>14} {bpw:6.2f} {nbytes / 2**20:7.2f} {t16 * 1e6:8.1f} {t * 1e6:8.1f} "
              f"{traw * 1e6:7.1f} {sp:7.2f} {ideal:6.2f} {sp / ideal:9.2f} {gbs:6.0f} {tfloor * 1e6:8.1f} {t / tfloor:7.2f} "
              f"{'ok' if ok else 'FAIL':>6} "
              f"{rel:8.1e} {n_bad:>3} {n_skip:>4}  {cfg}")
    batches = sorted({r[1] for r in rows})
    print("\nspeed-up over the same-run bf16 matmul by batch (ideal = 16 / bits; '<' slower than bf16, - no passing "
          "config)")
    print(f"{'KxN':>11} {'method':>14} {'ideal':>6} " + " ".join(f"{'B=' + str(b):>7}" for b in batches))
    for key in dict.fromkeys((r[0], r[2]) for r in rows):
        by_b = {r[1]: r for r in rows if (r[0], r[2]) == key}
        ideal = 16.0 / next(iter(by_b.values()))[3]
        cells = []
        for b in batches:
            r = by_b.get(b)
            sp = r[5] / r[6] if r is not None and r[9] and r[6] > 0 else float("nan")
            cells.append(f"{'-':>7}" if math.isnan(sp) else f"{('<' if sp < 1 else '') + f'{sp:.2f}':>7}")
        print(f"{key[0]:>11} {key[1]:>14} {ideal:6.2f} " + " ".join(cells))


def print_cells(rows: list[tuple]) -> None:
    """Per (shape, batch): the bf16 time, then per method its read floor, best time, speed-up / ideal and config."""
    print("\nper (shape, batch): bf16 us | per method: floor us, best us, speed-up over bf16 / ideal (16/bits), "
          "best config")
    for key in dict.fromkeys((r[0], r[1]) for r in rows):
        cell = [r for r in rows if (r[0], r[1]) == key]
        print(f"{key[0]:>11} B={key[1]:<4} bf16 {cell[0][5] * 1e6:8.1f} us")
        for r in cell:
            sp = r[5] / r[6] if r[9] and r[6] > 0 else float("nan")
            print(f"{'':>18}{r[2]:>8}: floor {r[12] * 1e6:7.1f}  best {r[6] * 1e6:8.1f} us  {sp:5.2f}x / "
                  f"{16 / r[3]:4.2f}  {r[8]}")


def print_routes(best_cfgs: list) -> None:
    """The best passing config per (method, shape, batch) as dispatch.Route rows (speed-up over bf16 in a comment),
    to paste into ROUTES in pallas_kernels/quant/dispatch.py (keep the rows for any shape after them)."""
    print("\nbest configs as dispatch.Route rows (pallas_kernels/quant/dispatch.py ROUTES; first match wins):")
    fields = ("block_n", "block_k", "block_b", "split_k", "num_warps", "num_stages", "levels", "acc", "lut", "swap",
              "cvt")
    base = BlockConfig()
    for method, k, n, b, cfg, sp in best_cfgs:
        if not isinstance(cfg, BlockConfig):
            continue
        kw = {f: getattr(cfg, f) for f in fields if getattr(cfg, f) != getattr(base, f)}
        print(f"    Route({method!r}, {b}, {cfg.mode!r}, shape=({k}, {n}), blocks={kw!r}),  # {sp:.2f}x bf16")


def lower_only(args) -> None:
    """Pallas -> Triton IR lowering for CUDA of every benchmark variant, on zero placeholder weights (no GPU)."""
    shapes = [tuple(int(v) for v in s.split("x")) for s in (args.shapes or SHAPES).split(",")]
    batches = [int(b) for b in (args.batches or BATCHES).split(",")]
    n_ok = n_fail = n_skip = 0
    for (k, n) in shapes:
        for label in args.methods.split(","):
            spec, kind = METHODS[label]
            pw = placeholder(Q.parse_method(spec), n, k)
            for b in batches:
                x = jax.ShapeDtypeStruct((b, k), jnp.bfloat16)
                tc = {"int": "int", "nf4": "nf4"}.get(pw.cfg.method, False)
                for cfg in sweep_configs(kind, b, args.sweep, spec.startswith(("phi", "e5")), tc, pw):
                    if not _fits(pw, cfg):
                        n_skip += 1
                        continue
                    op = quant_matmul if kind == "fused" else gather_matmul
                    try:
                        jax.jit(lambda x, p, cfg=cfg, op=op: op(x, p, blocks=cfg)).trace(x, pw).lower(
                            lowering_platforms=("cuda",))
                        n_ok += 1
                    except Exception as e:
                        n_fail += 1
                        print(f"FAIL {label} {k}x{n} b={b} {_cfg_str(cfg)}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    print(f"lowered for cuda: {n_ok} ok, {n_fail} failed, {n_skip} configs skipped (do not fit the shape)")


if __name__ == "__main__":
    main()
