"""Benchmark of the quantized matmul kernels beside a bf16 XLA matmul of the same shape, in one process.

    python -m bench.quant_kernels                 # GPU: 4096x4096, 4096x11008, 11008x4096; batch 1-256;
                                                  # int4, nf4, phi5u8; paced to finish in --budget-s (330 s)
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
from hqf_jax.quant.kernel_timing import bf16_weight, check, copies_for, copy_tree, time_floor, time_for, tolerance
from hqf_jax.quant.linear import placeholder, prepare
from hqf_jax.quant.qtensor import dequantize_matrix
from pallas_kernels.quant import (
    BlockConfig,
    GatherBlockConfig,
    KernelLayoutError,
    check_blocks,
    default_blocks,
    gather_matmul,
    quant_matmul,
)
from pallas_kernels.quant.dispatch import auto_split
from pallas_kernels.quant.gemv import MAX_VEC_BATCH, vec_layout
from pallas_kernels.quant.layout import next_pow2
from pallas_kernels.quant.tc import check_tc

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


VEC_CONFIGS = [BlockConfig(block_n=bn, block_k=bk, num_warps=nw, num_stages=st, mode="vec")
               for bn, bk, nw, st in [(1, 1024, 1, 4), (2, 4096, 4, 1), (1, 2048, 1, 3), (1, 4096, 1, 1), (1, 512, 1, 4),
                                      (2, 2048, 2, 3), (2, 1024, 1, 4), (1, 1024, 2, 4), (4, 4096, 4, 1), (1, 2048, 2, 3),
                                      (4, 1024, 4, 3), (2, 4096, 2, 1)]]


def tc_configs(batch: int, level: str, nf4: bool = False, pw=None) -> list:
    """Tensor-core form configs (most promising first): batch tile block_m 16-64, (block_n, block_k, warps,
    stages) by batch, split_k filling the GPU's 132 SMs when the weight is known; the first tile also with bf16
    decode arithmetic (second), the other operand order and, for NF4, the table-load lookup."""
    bm = min(64, max(16, next_pow2(batch)))
    if batch <= 16:
        tiles = [(128, 256, 4, 3), (64, 128, 4, 4), (128, 128, 4, 3), (256, 256, 8, 3)]
    elif batch <= 64:
        tiles = [(128, 128, 4, 3), (128, 256, 4, 3), (256, 128, 8, 3), (64, 256, 4, 3)]
    else:
        tiles = [(128, 128, 4, 3), (256, 128, 8, 3), (128, 256, 8, 3), (256, 64, 8, 4)]
    if level == "full":
        tiles += [(bn, bk, 8 if nw == 4 else 4, st + 1) for bn, bk, nw, st in tiles]
    cfgs = [BlockConfig(block_n=bn, block_k=bk, block_b=bm, num_warps=nw, num_stages=st, mode="tc",
                        split_k=auto_split(pw, batch, bm, bn, bk) if pw is not None else 1)
            for bn, bk, nw, st in tiles]
    cfgs.insert(1, dataclasses.replace(cfgs[0], cvt="bf16"))  # (int8: dropped by _fits, cvt bf16 needs <= 4 bits)
    cfgs.append(dataclasses.replace(cfgs[0], swap=False))
    if nf4:
        cfgs.append(dataclasses.replace(cfgs[0], lut="load"))
    return cfgs


def sweep_configs(kind: str, batch: int, level: str, phi: bool = False, tc: bool = False, pw=None):
    """Block configs tried per (kernel, batch), most promising first; the fastest that passes its check is
    reported. tc: the weight can take the tensor-core form (int / NF4), "nf4" for NF4 (adds the lut variant)."""
    if kind == "fused" and tc and batch >= 8:
        cfgs = tc_configs(batch, level, tc == "nf4", pw)
        return cfgs[: 1 if level == "none" else None] + sweep_configs(kind, batch, level, phi)[:2]
    if kind == "gather":
        cfgs = [GatherBlockConfig(block_n=16, block_k=32, split_k=4), GatherBlockConfig(block_n=32, block_k=32, split_k=2)]
        if phi:
            cfgs.append(GatherBlockConfig(block_n=16, block_k=32, split_k=4, levels="table"))
        return cfgs[: 1 if level == "none" else None]
    if batch <= 16:
        cfgs = [
            BlockConfig(block_n=32, block_k=128, split_k=4, num_warps=4, num_stages=3),
            BlockConfig(block_n=64, block_k=128, split_k=2, num_warps=4, num_stages=3),
            BlockConfig(block_n=32, block_k=64, split_k=4, num_warps=4, num_stages=4),
            BlockConfig(block_n=32, block_k=256, split_k=2, num_warps=4, num_stages=3),
        ]
        if batch <= 2:
            cfgs = [dataclasses.replace(c, mode="fma") for c in cfgs[:2]] + [dataclasses.replace(cfgs[1], mode="dot")]
        if level == "full":
            cfgs += [dataclasses.replace(c, num_warps=8) for c in cfgs] + [
                BlockConfig(block_n=64, block_k=64, split_k=8, num_warps=4, num_stages=4),
                BlockConfig(block_n=16, block_k=256, split_k=4, num_warps=4, num_stages=4)]
        if batch <= MAX_VEC_BATCH:  # the GEMV form (pallas_kernels/quant/gemv.py) first; φ specs also try it
            cfgs = VEC_CONFIGS + cfgs  # with level tables (the first three configs below)
    elif batch <= 64:  # tensor-core tiles of the batch itself (block_b = batch rounded up to a power of two)
        bb = max(16, 1 << (batch - 1).bit_length())
        cfgs = [
            BlockConfig(block_n=32, block_k=128, block_b=bb, split_k=2, num_warps=4, num_stages=3),
            BlockConfig(block_n=64, block_k=64, block_b=bb, split_k=1, num_warps=4, num_stages=3),
            BlockConfig(block_n=64, block_k=128, block_b=bb, split_k=2, num_warps=4, num_stages=3),
            BlockConfig(block_n=128, block_k=64, block_b=bb, split_k=1, num_warps=8, num_stages=3),
        ]
        if level == "full":
            cfgs += [BlockConfig(block_n=32, block_k=64, block_b=bb, split_k=4, num_warps=4, num_stages=4),
                     BlockConfig(block_n=64, block_k=128, block_b=bb, split_k=1, num_warps=8, num_stages=4)]
    else:
        cfgs = [
            BlockConfig(block_n=64, block_k=64, block_b=64, split_k=1, num_warps=4, num_stages=3),
            BlockConfig(block_n=128, block_k=64, block_b=64, split_k=1, num_warps=8, num_stages=3),
            BlockConfig(block_n=64, block_k=128, block_b=128, split_k=1, num_warps=8, num_stages=3),
        ]
        if level == "full":
            cfgs += [BlockConfig(block_n=128, block_k=64, block_b=128, split_k=1, num_warps=8, num_stages=4)]
    if phi:
        cfgs += [dataclasses.replace(c, levels="table") for c in cfgs[:3]]
    cfgs = cfgs[: 1 if level == "none" else None]
    if kind == "fused" and tc and 3 <= batch < 8 and level != "none":  # the tensor-core form, padded to 16 rows
        cfgs += tc_configs(batch, level, tc == "nf4", pw)[:1]
    return cfgs


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
    ap.add_argument("--budget-s", type=float, default=330.0,
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
            best_cfgs.append((q.cfg.method, k, n, b, cfg, t16 / t))
            tqdm.write(f"  {label} {k}x{n} b={b}: kernel {t * 1e6:.1f} us, bf16 {t16 * 1e6:.1f} us, "
                       f"speed-up {t16 / t:.2f} (ideal {16 / bpw:.2f}), ok {_cfg_str(cfg)}")
    print_tables(rows, interpret)
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


def _fits(pw, c) -> bool:
    try:
        if getattr(c, "mode", None) == "tc":
            check_tc(pw, c)
            check_blocks(pw, c.block_n, c.block_k, c.split_k, group_check=False)
            return True
        vec = getattr(c, "mode", None) == "vec"
        check_blocks(pw, c.block_n, c.block_k, c.split_k, min_block_n=1 if vec else 16)
        if vec:
            vec_layout(pw, c.block_k)
        return True
    except KernelLayoutError:
        return False


def _cfg_str(c) -> str:
    mode = getattr(c, "mode", "gather")
    acc = f" {c.acc}" if mode == "vec" else (f" {c.lut} {c.cvt}{'' if c.swap else ' noswap'}" if mode == "tc" else "")
    return (f"n{c.block_n} k{c.block_k} b{c.block_b or '-'} s{c.split_k} w{c.num_warps} st{c.num_stages} "
            f"{mode}{acc} {c.levels}")


if __name__ == "__main__":
    main()
