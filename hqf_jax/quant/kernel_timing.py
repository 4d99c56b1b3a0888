"""On-device timing and checking of the quantized matmul kernels, shared by the quant kernel benchmark and its
stage probe (entry points import these; nothing here is specific to one script).

Timing: `reps` iterations of a lax.fori_loop inside one jit, each iteration calling the op on `copies` distinct
weight buffers (together > 3x the L2, so weights come from HBM), every output fully summed into a loop-carried
value that feeds the next input so nothing is hoisted or sliced away; the same loop with a trivial op of the
same output shape is timed and subtracted (loop + glue overhead).
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax import trace_stats

L2_BYTES = 50 * 2**20  # an H100's L2 (the H200's is the same size): weight copies exceed 3x this


def copies_for(nbytes: int, interpret: bool) -> int:
    """Distinct weight copies per loop iteration so that together they exceed 3x the L2 (1 in interpret mode)."""
    return 1 if interpret else int(min(16, max(1, math.ceil(3 * L2_BYTES / nbytes))))


def copy_tree(t):
    """A copy of every array of a pytree in new buffers."""
    return jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True) + jnp.zeros((), a.dtype), t)


def _loop(fn):
    """jit of `reps` (a traced count: one compile serves every repetition count) iterations calling fn(x, w) on
    every weight, every output fully summed into a loop-carried value that feeds the next input."""

    @jax.jit
    def run(x, ws, reps):
        def body(i, carry):
            x, acc = carry
            for w in ws:
                y = fn(x, w)
                acc = acc + jnp.sum(y.astype(jnp.float32))  # all of y is used: no slicing of the product
            return x + (acc * 1e-30).astype(x.dtype), acc

        return jax.lax.fori_loop(0, reps, body, (x, jnp.float32(0)))

    return run


_NULL_LOOPS: dict = {}


def _null_loop(n_out: int):
    """The overhead loop (a trivial op of the same output shape), one jit per output width (cached)."""
    if n_out not in _NULL_LOOPS:
        _NULL_LOOPS[n_out] = _loop(lambda x, w: jnp.broadcast_to(x[:, :1], (x.shape[0], n_out)))
    return _NULL_LOOPS[n_out]


def _clock(run, x, weights, reps: int) -> float:
    r = jnp.int32(reps)
    jax.block_until_ready(run(x, weights, r))  # compile (first call only) + warm up
    t0 = time.perf_counter()
    jax.block_until_ready(run(x, weights, r))
    return (time.perf_counter() - t0) / (reps * len(weights))


def time_op(op, x, weights: list, reps: int, n_out: int, run=None) -> tuple[float, float]:
    """Seconds per call of op(x, w) (overhead-subtracted, raw) over `reps` x len(weights) calls in one jit."""
    raw = _clock(run or _loop(op), x, weights, reps)
    base = _clock(_null_loop(n_out), x, weights, reps)
    return max(raw - base, 1e-9), raw


def time_for(op, x, weights: list, n_out: int, target_s: float, interpret: bool) -> tuple[float, float]:
    """time_op with the repetitions set so that one timing takes about target_s device seconds (interpret mode:
    one repetition, which only exercises the code). The op's loop compiles once for both passes."""
    run = _loop(op)
    if interpret:
        return time_op(op, x, weights, 1, n_out, run)
    est, _ = time_op(op, x, weights, 3, n_out, run)
    return time_op(op, x, weights, int(np.clip(target_s / max(est * len(weights), 1e-7), 3, 2000)), n_out, run)


def time_floor(x, ws, n_out: int, target_s: float, interpret: bool) -> float:
    """The read floor: one XLA reduction over buffers of the packed weight's bytes (the same copies), i.e. the
    time to stream those bytes in one kernel at this size."""

    def op(x, w):
        v = (jnp.sum(w) & jnp.uint32(1)).astype(x.dtype)  # every word is read; the result feeds the output
        return jnp.broadcast_to(x[:, :1] + v, (x.shape[0], n_out))

    return time_for(op, x, ws, n_out, target_s, interpret)[0]


def tolerance(x, wm, ref) -> jax.Array:
    """check's per-output bound, bf16 rounding of the weights and of the output: 2^-7 (|x| @ |wm|^T + |ref|) + 1e-6
    (on device; compute it once per weight and x and pass it to every check of that cell)."""
    f32 = jnp.float32
    s = jnp.matmul(jnp.abs(jnp.asarray(x, f32)), jnp.abs(jnp.asarray(wm, f32)).T, precision=jax.lax.Precision.HIGHEST)
    return 2.0**-7 * (s + jnp.abs(jnp.asarray(ref, f32))) + 1e-6


def check(y, ref, x, wm, bound=None) -> tuple[bool, float]:
    """(|y - ref| within bf16 rounding of the weights and of the output, max error relative to max |ref|)."""
    bound = tolerance(x, wm, ref) if bound is None else bound
    y = jnp.asarray(y, jnp.float32)
    ref = jnp.asarray(ref, jnp.float32)
    if y.shape != ref.shape:
        return False, float("nan")
    err = jnp.abs(y - ref)
    ok = bool(jnp.all(err <= bound))
    return ok, float(jnp.max(err) / jnp.maximum(jnp.max(jnp.abs(ref)), 1e-30))


def bf16_weight(w):
    """bf16 (N, K) matrix of a (K, N) kernel: the XLA baseline's weight."""
    return jnp.asarray(w).T.astype(jnp.bfloat16)


def copy_bandwidth(nbytes: int, reps: int) -> float:
    """Bytes/s of y = x + 1 over a float32 array of ``nbytes`` (one read and one write per element)."""
    x = jnp.zeros((nbytes // 4,), jnp.float32)
    loop = jax.jit(lambda x: jax.lax.fori_loop(0, reps, lambda i, y: y + 1.0, x))
    loop(x).block_until_ready()
    t = time.perf_counter()
    loop(x).block_until_ready()
    return 2 * nbytes * reps / (time.perf_counter() - t)


def require_hopper(tool: str):
    """The first device when it is a Hopper GPU (where Mosaic GPU lowers); else None, having said why on stderr."""
    import sys

    from pallas_kernels.quant.layout_table import hopper  # here: keeps Pallas unloaded for the other scripts

    dev = jax.devices()[0]
    if not hopper():
        print(f"{tool} needs a Hopper GPU (H100/H200); this is {dev.device_kind}", file=sys.stderr)
        return None
    print(f"device {dev.device_kind}; jax {jax.__version__}; {time.strftime('%Y-%m-%d')}", flush=True)
    return dev


def bf16_copies(w) -> list:
    """The bf16 weight of w (k, n) and enough copies of it to defeat the L2."""
    w16 = bf16_weight(w)
    return [w16] + [copy_tree(w16) for _ in range(copies_for(w.size * 2, False) - 1)]


def method_layout(token: str, shuffle: bool = False) -> tuple[str, bool, str]:
    """(method spec, shuffled codes?, row label) of a sweep's --methods entry: "nf4" or "nf4+shuffled" (codes in
    the lookup's column order; table codecs only), so that one process times both layouts of a weight. ``shuffle``
    (the sweeps' --shuffle) shuffles every table codec."""
    from hqf_jax.quant.config import parse_method

    spec, plus, opt = token.partition("+")
    if plus and opt != "shuffled":
        raise ValueError(f"--methods entry {token!r}: the only layout suffix is '+shuffled'")
    cfg = parse_method(spec)
    shuffled = (shuffle or bool(plus)) and cfg.method != "int"  # int codes take Mosaic GPU's own relayout
    if plus and not shuffled:
        raise ValueError(f"--methods entry {token!r}: only table codecs (NF4, phi4) store shuffled codes")
    return spec, shuffled, cfg.name + ("+shuffled" if shuffled else "")


def hopper_weights(q, shuffle: bool = False) -> dict:
    """What the Hopper sweeps time for a QTensor: its PackedWeight (pw) and MosaicWeight (mw; ``shuffle``: codes
    in the lookup's column order, table codecs), L2-defeating copies of both (pws, mws), random words of mw's size
    for the read floor (floor_ws), the dequantized matrix (wm)."""
    from hqf_jax.quant.linear import prepare
    from hqf_jax.quant.qtensor import dequantize_matrix
    from pallas_kernels.quant.mosaic_layout import prepare_mosaic

    pw = prepare(q)
    mw = prepare_mosaic(pw, shuffle=shuffle)
    mws = [mw] + [copy_tree(mw) for _ in range(copies_for(mw.nbytes, False) - 1)]
    return dict(pw=pw, mw=mw, wm=dequantize_matrix(q), mws=mws,
                pws=[pw] + [copy_tree(pw) for _ in range(copies_for(pw.nbytes, False) - 1)],
                floor_ws=[jax.random.bits(jax.random.key(100 + c), (mw.nbytes // 4,), jnp.uint32)
                          for c in range(len(mws))])


def trace_op(op, x, weights: list, reps: int, top: int = 8) -> dict:
    """The kernels one call of op(x, w) launches, from a profiler trace of `reps` x len(weights) calls in the
    timing loop: per call, each kernel's mean µs by normalized name (the loop's own sum and add are listed too:
    they are the null loop's share), the busy and wall time (hqf_jax/trace_stats.summarize)."""
    run = _loop(op)
    r = jnp.int32(reps)
    jax.block_until_ready(run(x, weights, r))  # compile and warm up outside the trace
    trace = trace_stats.capture(lambda: jax.block_until_ready(run(x, weights, r)))
    events, source = trace_stats.device_events(trace)
    if not events:
        raise RuntimeError(f"no device events in the trace ({trace_stats.SOURCES[source]})")
    return dict(source=source, **trace_stats.summarize(events, reps * len(weights), top))


def mosaic_configs(mw, more: int = 3) -> list:
    """The weight's plan (MosaicBlocks()), the plan at pipeline depth 2 (stage probe, 2026-11-30: 10.7 µs where the
    plan's depth 4 took 15.0 on 4096x11008 batch 1), the plan with the value accumulator, the plan reading x
    unpadded and padded (pad_x False / True: at a given batch one of them is the plan's own choice; the sweeps skip
    a form already timed), for table codecs the plan with the other lookups (two blocks a word, "words"; nf4_prmt's
    lookup on the WGMMA layout's registers and the select tree, unshuffled codes only), and the cheapest split of
    each of the `more` next (rows per warpgroup, groups per step) forms that divides the weight's padded groups (by the
    plan's own cost model, mosaic_layout.plan_options)."""
    from pallas_kernels.quant import mosaic as M
    from pallas_kernels.quant.mosaic_layout import plan_options

    n, _ = mw.shape
    out = [M.MosaicBlocks(), M.MosaicBlocks(stages=2), M.MosaicBlocks(acc="value"), M.MosaicBlocks(pad_x=False),
           M.MosaicBlocks(pad_x=True)]
    if mw.levels is not None:  # table codecs: the other lookups (shuffled codes: only those on the relaid words)
        out += [M.MosaicBlocks(nf4=d) for d in M.NF4_DECODES if d != M.MosaicBlocks().nf4
                and (not mw.shuffled or d.startswith("words"))]
    seen, base = {(mw.plan.wg_rows, mw.plan.groups)}, len(out)
    for _, p in plan_options(n, mw.w.shape[0], mw.group, max_pad=0.0, bits=mw.bits):
        if (p.wg_rows, p.groups) not in seen and len(out) < base + more:
            seen.add((p.wg_rows, p.groups))
            out.append(M.MosaicBlocks(wg_rows=p.wg_rows, groups=p.groups, split_k=p.split_k))
    return out


def mosaic_cfg_str(c, mw=None, batch: int = 1) -> str:
    """'g{groups}/r{wg_rows}/{acc}/sk{split_k}/st{stages}/bb{block_b}' of MosaicBlocks c (resolved for mw and
    batch when mw is given)."""
    from pallas_kernels.quant import mosaic as M

    if mw is not None:
        c = M.resolve(mw, batch, c)
    sel = ("" if c.nf4 == M.MosaicBlocks().nf4 else f"/{c.nf4}") + ("/nopad" if c.pad_x is False else "")
    return f"g{c.groups}/r{c.wg_rows}/{c.acc}/sk{c.split_k}/st{c.stages}/bb{c.block_b}{sel}"
