"""Hopper form (mode "mosaic") of the fused dequantize-matmul for 4-bit int, int8, NF4 and 4-bit φ-grid weights:
Pallas's Mosaic GPU backend, so that the copy engine (TMA) streams the weight and the tensor cores (wgmma) take the
decoded tile straight from registers. Issue 22's kernel for batch >= 8 (and below where it measures faster than the GEMV
form). The weight layout and the launch plan: pallas_kernels/quant/mosaic_layout.py.

    mw = prepare_mosaic(prepare(q))      # once: int4 (int8) codes group by group, bf16 group multipliers
    y = mosaic_matmul(x, mw)             # x (B, K) bf16 -> y (B, N)

The kernel computes y^T = W x^T: per program 2 compute warpgroups own wg_rows output rows each (wgmma's M side,
64 or 128), the batch tile is wgmma's N side (16-128), and one warpgroup issues the copies
(emit_pipeline_warp_specialized). Each step takes `groups` groups of g input columns; per group a compute
warpgroup loads its (wg_rows, g) int4 tile from shared memory in the layout made for 4-bit upcasts, converts it
to bf16 (int4 -> bf16 in registers: prmt/lop3/sub; int8 tiles load in the layout made for 8-bit upcasts and
convert by Mosaic's prmt/and/sub), for NF4 looks its level up by byte permutes on whole 32-bit
words after an i32 relayout (nf4_words.py; blocks.nf4="prmt": the same lookup on the WGMMA layout's registers,
"select": the select tree of before),
multiplies by the row's group scale (one broadcast per row), and issues wgmma with x^T from shared memory; the
step waits for its wgmmas once. The accumulator is either carried as a value ("value") or lives in one
accumulator ref for the whole K loop ("ref"). split_k splits the K steps over programs (f32 partials summed by
XLA) so that the programs fill the SMs (the weight's plan picks it, with the group padding that makes it divide).

Hopper only (sm_90a) to run: its CPU interpreter does not run warp-specialized pipelines in jax 0.10. It lowers
for "cuda" on a CPU machine, though (Mosaic GPU builds the kernel's IR in Python, layouts, relayouts and inline
PTX included; only the PTX compile needs the GPU): tests/test_quant_mosaic_lower.py lowers every variant on CPU
and checks what it emits, tests/test_quant_mosaic.py the layout and the jnp model of the kernel on CPU and the
kernel's numbers on the GPU.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pallas_kernels.quant.layout import KernelLayoutError
from pallas_kernels.quant.nf4_prmt import nf4_levels_prmt
from pallas_kernels.quant.nf4_words import nf4_levels_words
from pallas_kernels.quant.mosaic_layout import (COMPUTE_WGS, SMEM_BYTES, MosaicWeight, Plan, check_mosaic,
                                                decode_model, nf4_level, plan_for, prepare_mosaic, prepare_mosaic_jit,
                                                smem_bytes)

__all__ = ["MosaicBlocks", "MosaicWeight", "Plan", "check_mosaic", "decode_model", "mosaic_matmul",
           "mosaic_matmul_jit", "nf4_level", "plan_for", "prepare_mosaic", "prepare_mosaic_jit", "resolve",
           "smem_bytes"]

MIN_TILE_B = 16  # the batch tile (wgmma N) is padded to at least this many rows
# Stage probes (bench.quant_mosaic_stages; the product is WRONG under a probe): "no_decode" feeds wgmma a constant
# register tile in place of the decoded weight (copies + wgmma + waits, no smem load / convert / scale); "copy"
# runs the pipeline's copies and barriers with an empty compute step. Full minus no_decode is the decode's cost.
PROBES = ("none", "no_decode", "copy")
NF4_DECODES = ("words", "words8", "prmt", "select")


@dataclasses.dataclass(frozen=True)
class MosaicBlocks:
    """None: the weight's plan (wg_rows, groups, split_k), the batch padded to a power of two in [16, 128]
    (block_b), the deepest pipeline up to 4 that fits shared memory (stages)."""
    block_b: int | None = None
    split_k: int | None = None  # programs along K (partials summed in float32 by XLA)
    stages: int | None = None  # pipeline depth (max_concurrent_steps)
    groups: int | None = None  # groups of g input columns per pipeline step
    wg_rows: int | None = None  # output rows per compute warpgroup (wgmma M: 64 or 128)
    acc: str = "ref"  # "ref": one accumulator ref for the K loop; "value": carried through the pipeline
    probe: str = "none"  # PROBES: a stage probe for timing only (the result is not the product)
    nf4: str = "words8"  # NF4_DECODES: byte-permute lookup on relaid 32-bit words (nf4_words.py), "words8" one PTX
    # block for a word's eight nibbles (22 ops where "words"' two half-word blocks take 25; 4096x11008 batch 1 / 8:
    # 19.8 / 20.7 µs against 20.1 / 21.1, one process, H200, 2026-12-01), on the WGMMA layout's two-nibble registers
    # (nf4_prmt.py, 2.5x slower), or the select tree (3.9x)
    pad_x: bool | None = None  # False: x is read as it is (rows padded to a multiple of 8 only where the batch is
    # above 8 and not one: Mosaic tiles x by 8 rows), the copy engine filling the tile's rows past the batch and
    # columns past K with zeros (Pallas's tensor copies read out of bounds as zeros). A row past the batch reaches
    # only its own output column, sliced away; columns past K meet only the plan's padded groups, whose weights are
    # exactly zero (a NaN fill would reach every output: the fill is zeros). True: an XLA pad to the batch tile and
    # the plan's K first. None: False below batch 8, True from 8. One process, H200, 2026-12-01: batch 1 int4
    # 4096x11008 15.7 µs unpadded against 16.5 padded, 4096x4096 9.7 against 9.8-10.4 (the plan's other forms);
    # batch 8-64 unpadded 0 to 0.3 µs slower (4096x4096 batch 8: 10.8 against 10.5); batches 2-7 not timed


def tile_b_for(batch: int, blocks: MosaicBlocks) -> int:
    if blocks.block_b is not None:
        tb = blocks.block_b
    else:
        tb = min(128, max(MIN_TILE_B, 1 << max(0, int(np.ceil(np.log2(max(batch, 1)))))))
    if tb % 8 or tb < MIN_TILE_B or tb > 256:
        raise KernelLayoutError(f"block_b={tb}: the batch tile (wgmma N) must be a multiple of 8 in [16, 256]")
    return tb


def resolve(mw: MosaicWeight, batch: int, blocks: MosaicBlocks | None = None) -> MosaicBlocks:
    """Every field of blocks filled in (plan, batch tile, fitting stages), or KernelLayoutError naming every
    problem."""
    b = blocks or MosaicBlocks()
    p = mw.plan
    b = dataclasses.replace(b, split_k=b.split_k or p.split_k, groups=b.groups or p.groups,
                            wg_rows=b.wg_rows or p.wg_rows)
    n, _ = mw.shape
    ng = mw.w.shape[0]
    problems = []
    if b.wg_rows not in (64, 128) or n % (COMPUTE_WGS * b.wg_rows):
        problems.append(f"wg_rows={b.wg_rows}: use 64 or 128 with {COMPUTE_WGS} x wg_rows dividing the {n} "
                        "output features")
    if b.stages is not None and b.stages < 1:
        problems.append(f"stages={b.stages}: the pipeline needs at least one stage")
    if b.acc not in ("value", "ref"):
        problems.append(f"acc={b.acc!r}: use 'value' or 'ref'")
    if b.nf4 not in NF4_DECODES:
        problems.append(f"nf4={b.nf4!r}: use one of {NF4_DECODES}")
    elif mw.shuffled and b.nf4 not in ("words", "words8"):
        problems.append(f"nf4={b.nf4!r} reads the codes in the weight's own column order: a shuffled weight "
                        "(prepare_mosaic(..., shuffle=True)) takes nf4='words' or 'words8'")
    if b.probe not in PROBES:
        problems.append(f"probe={b.probe!r}: use one of {PROBES}")
    if ng % (b.split_k * b.groups):
        problems.append(f"split_k={b.split_k} x groups={b.groups} must divide the {ng} groups along K (plan the "
                        "weight for them: prepare_mosaic(pw, Plan(...)))")
    if problems:
        raise KernelLayoutError("; ".join(problems))
    tb = tile_b_for(batch, b)
    has_off = mw.offset is not None
    tiles = [tb] if b.block_b is not None else [t for t in (128, 64, 32, 16) if t <= tb]  # auto: shrink to fit
    for t in tiles:
        stages = [b.stages] if b.stages is not None else [4, 3, 2]
        fits = [s for s in stages if smem_bytes(t, mw.group, b.groups, b.wg_rows, s, has_off, mw.bits) <= SMEM_BYTES]
        if fits:
            return dataclasses.replace(b, block_b=t, stages=fits[0], pad_x=batch >= 8 if b.pad_x is None else b.pad_x)
    raise KernelLayoutError(f"block_b={tiles[-1]} x groups={b.groups} x wg_rows={b.wg_rows} x stages={stages[-1]} "
                            "needs more shared memory than the GPU has: lower block_b, groups, wg_rows or stages")


def mosaic_matmul(x: jax.Array, mw: MosaicWeight, blocks: MosaicBlocks | None = None) -> jax.Array:
    """y (B, N) = x (B, K) @ W^T with W the dequantized weight of mw; bf16 x, float32 accumulation, y in x.dtype."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    n, k = mw.shape
    b, kx = x.shape
    if kx != k:
        raise KernelLayoutError(f"x has {kx} features, the weight {k}")
    blocks = resolve(mw, b, blocks)
    tb, g, gs_n, wr, sk = blocks.block_b, mw.group, blocks.groups, blocks.wg_rows, blocks.split_k
    steps = mw.w.shape[0] // (sk * gs_n)
    bp = -(-b // tb) * tb
    xp = x.astype(jnp.bfloat16)
    if blocks.pad_x:
        xp = jnp.pad(xp, ((0, bp - b), (0, mw.w.shape[0] * g - k)))
    elif b > 8 and b % 8:  # Mosaic tiles x in global memory by 8 rows
        xp = jnp.pad(xp, ((0, -b % 8), (0, 0)))
    cta_n = COMPUTE_WGS * wr
    nf4 = mw.levels is not None  # a table codec (NF4, 4-bit φ-grid): its level looked up

    x_swz = plgpu.find_swizzle(gs_n * g * 16, "rhs")
    w_swz = plgpu.find_swizzle(g * mw.bits, "lhs")
    o_swz = plgpu.find_swizzle(tb * 32, "out")
    x_tr = (plgpu.TilingTransform((8, x_swz * 8 // 16)), plgpu.SwizzleTransform(x_swz))
    w_tr = (plgpu.TilingTransform((8, w_swz * 8 // mw.bits)), plgpu.SwizzleTransform(w_swz))
    load_layout = plgpu.Layout.WGMMA_UPCAST_4X if mw.bits == 4 else plgpu.Layout.WGMMA_UPCAST_2X
    o_tr = (plgpu.TilingTransform((8, o_swz * 8 // 32)), plgpu.SwizzleTransform(o_swz))
    row_layout = plgpu.Layout.WGMMA.reduce(1)

    def kernel(x_gmem, w_gmem, s_gmem, *rest, o_smem):
        *off_gmem, o_gmem = rest
        ni, bi, si = lax.axis_index("n"), lax.axis_index("b"), lax.axis_index("s")
        wg = lax.axis_index("wg")
        rows = pl.ds(wg * wr, wr)

        def weight(j, w_smem, s_smem, o_ref):
            """(wr, g) bf16 tile of group j of this step, as wgmma reads it."""
            if blocks.probe == "no_decode":
                return plgpu.layout_cast(jnp.full((wr, g), 1.0, jnp.bfloat16), plgpu.Layout.WGMMA)
            w = plgpu.load(w_smem, (j, rows), layout=load_layout)
            if nf4 and blocks.nf4 in ("words", "words8"):  # relayout on i32 words (none if shuffled), lookup
                w = nf4_levels_words(w, mw.levels, relayout=not mw.shuffled, whole=blocks.nf4 == "words8")
            elif nf4 and blocks.nf4 == "prmt":
                w = nf4_levels_prmt(plgpu.layout_cast(w, plgpu.Layout.WGMMA), mw.levels)
            else:
                w = plgpu.layout_cast(w, plgpu.Layout.WGMMA).astype(jnp.bfloat16)
                w = nf4_level(w, mw.levels) if nf4 else w
            if o_ref:
                off = plgpu.load(o_ref[0], (j, rows), layout=row_layout)
                w = w + lax.broadcast_in_dim(off, w.shape, [0])
            s = plgpu.load(s_smem, (j, rows), layout=row_layout)
            return w * lax.broadcast_in_dim(s, w.shape, [0])

        def issue(acc_ref, x_smem, w_smem, s_smem, o_ref):
            for j in range(gs_n):
                xt = plgpu.transpose_ref(x_smem.at[:, j * g:(j + 1) * g] if gs_n > 1 else x_smem, (1, 0))
                plgpu.wgmma(acc_ref, weight(j, w_smem, s_smem, o_ref), xt)

        def body(_, x_smem, w_smem, s_smem, *more):
            *o_ref, acc = more
            if blocks.probe == "copy":
                return acc
            if blocks.acc == "ref":
                issue(acc, x_smem, w_smem, s_smem, o_ref)
                plgpu.wgmma_wait(0)
                return acc
            return pl.run_state(lambda a: issue(a, x_smem, w_smem, s_smem, o_ref))(plgpu.ACC.init(acc))

        def store(acc):
            o_smem[wg] = acc
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(o_smem.at[wg], o_gmem.at[si, pl.ds(ni * cta_n + wg * wr, wr), pl.ds(bi * tb, tb)])
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)

        def compute(run):
            if blocks.acc == "ref":
                def scoped(acc_ref):
                    run(acc_ref)
                    store(acc_ref[...])
                pl.run_scoped(scoped, plgpu.ACC((wr, tb), jnp.float32))
            else:
                store(run(plgpu.layout_cast(jnp.zeros((wr, tb), jnp.float32), plgpu.Layout.WGMMA)))

        gspec = plgpu.BlockSpec((gs_n, cta_n), lambda kk: (kk, 0))
        pipe = plgpu.emit_pipeline_warp_specialized(
            body, grid=(steps,), memory_registers=40, wg_axis="wg", num_compute_wgs=COMPUTE_WGS,
            max_concurrent_steps=min(blocks.stages, steps), compute_context=compute,
            in_specs=[plgpu.BlockSpec((tb, gs_n * g), lambda kk: (0, kk), transforms=x_tr),
                      plgpu.BlockSpec((gs_n, cta_n, g), lambda kk: (kk, 0, 0), transforms=w_tr),
                      gspec, *([gspec] if off_gmem else [])])
        per = steps * gs_n  # groups per program
        ks = pl.ds(si * per * g, per * g)
        gsl = pl.ds(si * per, per)
        ns = pl.ds(ni * cta_n, cta_n)
        pipe(x_gmem.at[pl.ds(bi * tb, tb), ks], w_gmem.at[gsl, ns], s_gmem.at[gsl, ns],
             *[og.at[gsl, ns] for og in off_gmem])

    f = plgpu.kernel(
        kernel, out_type=jax.ShapeDtypeStruct((sk, n, bp), jnp.float32),
        grid=(n // cta_n, bp // tb, sk), grid_names=("n", "b", "s"),
        num_threads=COMPUTE_WGS + 1, thread_name="wg",
        scratch_types=dict(o_smem=plgpu.SMEM((COMPUTE_WGS, wr, tb), jnp.float32, transforms=o_tr)),
    )
    args = (xp, mw.w, mw.scale) + ((mw.offset,) if mw.offset is not None else ())
    part = f(*args)  # (split_k, N, Bp) float32
    return part.sum(0)[:, :b].T.astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("blocks",))
def mosaic_matmul_jit(x, mw, blocks=None):
    return mosaic_matmul(x, mw, blocks)
