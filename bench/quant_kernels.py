"""Benchmark of the quantized matmul kernels beside a bf16 XLA matmul of the same shape, in one process.

    python -m bench.quant_kernels                 # GPU: 4096x4096, 4096x11008, 11008x4096; batch 1, 16, 256
    python -m bench.quant_kernels --small         # CPU: tiny shapes in Pallas interpret mode (checks only)

For each weight (K in, N out), method and batch it
  1. quantizes a random N(0, 0.02) weight, packs it (PackedWeight), counts its bits per weight from the bytes;
  2. checks the kernel against its jnp reference (dequantize -> bf16 -> matmul) with a bf16-rounding bound;
  3. times kernel and bf16 matmul ON DEVICE: `reps` iterations of a lax.fori_loop inside one jit, each iteration
     calling the op on `copies` distinct weight buffers (together > 3x the 50 MB L2 of an H100, so weights come
     from HBM), every output fully summed into a loop-carried value that feeds the next input so nothing is
     hoisted or sliced away. The
     same loop with a trivial op of the same output shape is timed and subtracted (loop + glue overhead);
  4. sweeps a few block configs per kernel and keeps the fastest.
Speed-up = t_bf16 / t_kernel; the memory-bound ideal is 16 / bits_per_weight (scales included); the table shows
achieved / ideal. At batch 256 the product is no longer memory-bound, so the ideal is an upper bound only.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from hqf_jax import quant as Q
from hqf_jax.ops.quant_matmul import bf16_matmul, dequant_matmul_ref
from hqf_jax.quant.qtensor import dequantize_matrix
from pallas_kernels.gather_matmul import GatherBlockConfig, gather_matmul
from pallas_kernels.quant_common import KernelLayoutError, check_blocks, placeholder
from pallas_kernels.quant_gemv import MAX_VEC_BATCH, vec_layout
from pallas_kernels.quant_matmul import BlockConfig, default_blocks, prepare, quant_matmul

L2_BYTES = 50 * 2**20
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


def sweep_configs(kind: str, batch: int, level: str, phi: bool = False):
    """Block configs tried per (kernel, batch); the fastest that passes its check is reported."""
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
        if batch <= MAX_VEC_BATCH:  # the GEMV form (pallas_kernels/quant_gemv.py) first; φ specs also try it
            cfgs = VEC_CONFIGS + cfgs  # with level tables (the first three configs below)
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
    return cfgs[: 1 if level == "none" else None]


def _copy_tree(t):
    return jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True) + jnp.zeros((), a.dtype), t)


def time_op(op, x, weights: list, reps: int, n_out: int) -> tuple[float, float]:
    """Seconds per call of op(x, w) (overhead-subtracted, raw) over `reps` x len(weights) calls in one jit."""

    def make(fn):
        @jax.jit
        def run(x, ws):
            def body(i, carry):
                x, acc = carry
                for w in ws:
                    y = fn(x, w)
                    acc = acc + jnp.sum(y.astype(jnp.float32))  # all of y is used: no slicing of the product
                return x + (acc * 1e-30).astype(x.dtype), acc

            return jax.lax.fori_loop(0, reps, body, (x, jnp.float32(0)))

        return run

    def null(x, w):
        return jnp.broadcast_to(x[:, :1], (x.shape[0], n_out))

    def clock(run):
        jax.block_until_ready(run(x, weights))  # compile + warm up
        t0 = time.perf_counter()
        jax.block_until_ready(run(x, weights))
        return (time.perf_counter() - t0) / (reps * len(weights))

    raw = clock(make(op))
    base = clock(make(null))
    return max(raw - base, 1e-9), raw


def _time_floor(x, ws, n_out, target_s, interpret) -> float:
    def op(x, w):
        v = (jnp.sum(w) & jnp.uint32(1)).astype(x.dtype)  # every word is read; the result feeds the output
        return jnp.broadcast_to(x[:, :1] + v, (x.shape[0], n_out))

    if interpret:
        return time_op(op, x, ws, 1, n_out)[0]
    est, _ = time_op(op, x, ws, 3, n_out)
    return time_op(op, x, ws, int(np.clip(target_s / max(est * len(ws), 1e-7), 3, 2000)), n_out)[0]


def check(y, ref, x, wm) -> tuple[bool, float]:
    y = np.asarray(y, np.float32)
    ref = np.asarray(ref, np.float32)
    scale = np.abs(np.asarray(x, np.float32)) @ np.abs(np.asarray(wm, np.float32)).T
    ok = bool(np.all(np.abs(y - ref) <= 2.0**-7 * (scale + np.abs(ref)) + 1e-6))
    return ok, float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny shapes in interpret mode (CPU check)")
    ap.add_argument("--shapes", default=None, help="comma list of KxN (default 4096x4096,4096x11008,11008x4096)")
    ap.add_argument("--batches", default=None, help="comma list (default 1,16,256)")
    ap.add_argument("--methods", default="phi5u8,int4,nf4,nf4dq,gather-phi5u8", help=f"comma list of {sorted(METHODS)}")
    ap.add_argument("--sweep", default="small", choices=["none", "small", "full"])
    ap.add_argument("--target-s", type=float, default=0.25, help="device seconds per timing")
    ap.add_argument("--lower-only", action="store_true",
                    help="on any machine: lower every (shape, method, batch, block config) to Triton for CUDA and stop")
    args = ap.parse_args(argv)
    if args.lower_only:
        return lower_only(args)

    interpret = args.small
    shapes = args.shapes or ("256x256,256x512" if args.small else "4096x4096,4096x11008,11008x4096")
    batches = [int(b) for b in (args.batches or ("1,16" if args.small else "1,16,256")).split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in shapes.split(",")]
    methods = args.methods.split(",")
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}: use {sorted(METHODS)}")
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}); interpret={interpret}; jax {jax.__version__}")
    rows = []
    jobs = [(s, m) for s in shapes for m in methods]
    for (k, n), label in tqdm(jobs, desc="bench"):
        spec, kind = METHODS[label]
        w = jax.random.normal(jax.random.key(0), (k, n), jnp.float32) * 0.02
        q = Q.quantize(w, spec)
        pw = prepare(q)
        bpw = pw.nbytes * 8 / (k * n)
        assert abs(bpw - Q.bits_per_weight(q)) < 1e-9
        wm = dequantize_matrix(q)
        w16 = qc_matrix_bf16(w)
        copies = 1 if interpret else int(min(16, max(1, math.ceil(3 * L2_BYTES / pw.nbytes))))
        copies16 = 1 if interpret else int(min(16, max(1, math.ceil(3 * L2_BYTES / (k * n * 2)))))
        pws = [pw] + [_copy_tree(pw) for _ in range(copies - 1)]
        # the read floor: one XLA reduction over a random buffer of the packed weight's bytes (same copies)
        floor_ws = [jax.random.bits(jax.random.key(100 + c), (pw.nbytes // 4,), jnp.uint32) for c in range(copies)]
        w16s = [w16] + [_copy_tree(w16) for _ in range(copies16 - 1)]
        for b in batches:
            x = jax.random.normal(jax.random.key(b), (b, k)).astype(jnp.bfloat16)
            ref = dequant_matmul_ref(x, wm)
            if interpret:  # exercise the timing path only; interpret-mode times say nothing about the kernel
                t16, t16raw = time_op(bf16_matmul, x, w16s, 2, n)
            else:
                est, _ = time_op(bf16_matmul, x, w16s, 3, n)
                reps = int(np.clip(args.target_s / max(est * copies16, 1e-7), 3, 2000))
                t16, t16raw = time_op(bf16_matmul, x, w16s, reps, n)
            tfloor = _time_floor(x, floor_ws, n, args.target_s, interpret)
            best = None
            cfgs = [c for c in sweep_configs(kind, b, args.sweep, spec.startswith(("phi", "e5"))) if _fits(pw, c)]
            if not cfgs:
                cfgs = [default_blocks(pw, b) if kind == "fused" else GatherBlockConfig(split_k=1)]
            for cfg in cfgs:
                fn = (lambda x, p, cfg=cfg: quant_matmul(x, p, blocks=cfg, interpret=interpret)) if kind == "fused" else (
                    lambda x, p, cfg=cfg: gather_matmul(x, p, blocks=cfg, interpret=interpret))
                try:
                    ok, rel = check(fn(x, pw), ref, x, wm)
                    if interpret:
                        t, traw = time_op(fn, x, pws, 1, n)
                    else:
                        est, _ = time_op(fn, x, pws, 3, n)
                        r = int(np.clip(args.target_s / max(est * copies, 1e-7), 3, 2000))
                        t, traw = time_op(fn, x, pws, r, n)
                except Exception as e:  # a block config Triton rejects must not end the run
                    print(f"  {label} {k}x{n} b={b} {cfg}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                    if args.small:
                        traceback.print_exc()
                    continue
                tqdm.write(f"    {label} {k}x{n} b={b} {_cfg_str(cfg)}: {t * 1e6:.1f} us{'' if ok else ' FAIL'}")
                if best is None or t < best[0]:
                    best = (t, traw, cfg, ok, rel)
            if best is None:
                rows.append((f"{k}x{n}", b, label, bpw, pw.nbytes, t16, float("nan"), float("nan"), "-", False, float("nan"),
                             t16, tfloor))
                continue
            t, traw, cfg, ok, rel = best
            rows.append((f"{k}x{n}", b, label, bpw, pw.nbytes, t16, t, traw, _cfg_str(cfg), ok, rel, t16raw, tfloor))
            tqdm.write(f"  {label} {k}x{n} b={b}: kernel {t * 1e6:.1f} us, bf16 {t16 * 1e6:.1f} us, "
                       f"speed-up {t16 / t:.2f} (ideal {16 / bpw:.2f}), {'ok' if ok else 'FAIL'} {_cfg_str(cfg)}")

    print("\nTiming: on device, fori_loop in one jit, L2-defeating weight copies, null-loop overhead subtracted.")
    print("floor = one XLA reduction over a random buffer of the packed weight's bytes: the time to stream them in "
          "one kernel at this size; kern/floor = kernel us / floor us (1.0 = as fast as reading the bytes).")
    if interpret:
        print("INTERPRET MODE (CPU): the checks are real, the times only exercise the timing code.")
    hdr = (f"{'KxN':>11} {'B':>4} {'method':>14} {'bits':>6} {'MB':>7} {'bf16 us':>8} {'kern us':>8} {'raw us':>7} "
           f"{'speedup':>7} {'ideal':>6} {'ach/ideal':>9} {'GB/s':>6} {'floor us':>8} {'k/floor':>7} {'check':>6} "
           f"{'rel err':>8}  best blocks")
    print(hdr)
    for r in rows:
        shape, b, label, bpw, nbytes, t16, t, traw, cfg, ok, rel, _, tfloor = r
        sp = t16 / t if t and not math.isnan(t) else float("nan")
        ideal = 16.0 / bpw
        gbs = nbytes / t / 1e9 if t and not math.isnan(t) else float("nan")
        print(f"{shape:>11} {b:>4} {label:>14} {bpw:6.2f} {nbytes / 2**20:7.2f} {t16 * 1e6:8.1f} {t * 1e6:8.1f} "
              f"{traw * 1e6:7.1f} {sp:7.2f} {ideal:6.2f} {sp / ideal:9.2f} {gbs:6.0f} {tfloor * 1e6:8.1f} {t / tfloor:7.2f} "
              f"{'ok' if ok else 'FAIL':>6} "
              f"{rel:8.1e}  {cfg}")


def lower_only(args) -> None:
    """Pallas -> Triton IR lowering for CUDA of every benchmark variant, on zero placeholder weights (no GPU)."""
    shapes = [tuple(int(v) for v in s.split("x")) for s in (args.shapes or "4096x4096,4096x11008,11008x4096").split(",")]
    batches = [int(b) for b in (args.batches or "1,16,256").split(",")]
    n_ok = n_fail = n_skip = 0
    for (k, n) in shapes:
        for label in args.methods.split(","):
            spec, kind = METHODS[label]
            pw = placeholder(Q.parse_method(spec), n, k)
            for b in batches:
                x = jax.ShapeDtypeStruct((b, k), jnp.bfloat16)
                for cfg in sweep_configs(kind, b, args.sweep, spec.startswith(("phi", "e5"))):
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


def qc_matrix_bf16(w):
    """bf16 (N, K) matrix of a (K, N) kernel: the XLA baseline's weight."""
    return jnp.asarray(w).T.astype(jnp.bfloat16)


def _fits(pw, c) -> bool:
    try:
        vec = getattr(c, "mode", None) == "vec"
        check_blocks(pw, c.block_n, c.block_k, c.split_k, min_block_n=1 if vec else 16)
        if vec:
            vec_layout(pw, c.block_k)
        return True
    except KernelLayoutError:
        return False


def _cfg_str(c) -> str:
    mode = getattr(c, "mode", "gather")
    acc = f" {c.acc}" if mode == "vec" else ""
    return (f"n{c.block_n} k{c.block_k} b{c.block_b or '-'} s{c.split_k} w{c.num_warps} st{c.num_stages} "
            f"{mode}{acc} {c.levels}")


if __name__ == "__main__":
    main()
