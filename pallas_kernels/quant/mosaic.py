"""Hopper form (mode "mosaic") of the fused dequantize-matmul for 4-bit int and NF4 weights: Pallas's Mosaic GPU
backend, so that the copy engine (TMA) streams the weight and the tensor cores (wgmma) take the decoded tile
straight from registers. Issue 22's kernel for batch >= 8; the GEMV form (gemv.py) stays below.

Layout, made once at prepare time (prepare_mosaic, from the same PackedWeight the other forms read):
  * w      (K / g, N, g) int4, the signed codes group by group (each group a 2-D tile of its own, so a pipeline
           step can take several groups and each keeps its own swizzled tile): int: code - centre (symmetric: 2**(bits-1) - 1, so [-7, 7]) or code - 8
           (asymmetric); NF4: code - 8. XLA stores int4 two to a byte, so the weight streams at 4 bits.
  * scale  (K / g, N) bfloat16: the group multiplier (int scale, NF4 absmax with double quantization resolved).
  * offset (K / g, N) bfloat16 or None: asymmetric int only, 8 - zero (a small integer, exact in bf16), added to
           the code before the scale so that (code - zero) stays exact and nothing cancels.
The group multipliers are rounded to bf16 here; the products with the codes are rounded to bf16 in the kernel
(the value wgmma reads): both within the bf16 rounding of the weight that the reference applies.

The kernel computes y^T = W x^T: per program 2 compute warpgroups own wg_rows output rows each (wgmma's M side,
64 or 128), the batch tile is wgmma's N side (16-128), and one warpgroup issues the copies
(emit_pipeline_warp_specialized). Each step takes `groups` groups of g input columns; per group a compute
warpgroup loads its (wg_rows, g) int4 tile from shared memory in the layout made for 4-bit upcasts, converts it
to bf16 (int4 -> bf16 in registers: prmt/lop3/sub), for NF4 maps the integer to its level with a select tree,
multiplies by the row's group scale (one broadcast per row), and issues wgmma with x^T from shared memory; the
step waits for its wgmmas once. The accumulator is either carried as a value ("value") or lives in one
accumulator ref for the whole K loop ("ref"). split_k splits the K steps over programs (f32 partials summed by
XLA) so that tall-K shapes fill the GPU.

Hopper only (sm_90a): Mosaic GPU has no CPU lowering and its CPU interpreter does not run warp-specialized
pipelines in jax 0.10 (tests/test_quant_mosaic.py checks the layout prep and the jnp model of the kernel on CPU,
the kernel itself on the GPU).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hqf_jax.ops import quant_grids as qg
from pallas_kernels.quant.decode import decoder, tables_for
from pallas_kernels.quant.layout import KernelLayoutError, PackedWeight

MOSAIC_METHODS = ("int", "nf4")
COMPUTE_WGS = 2
MIN_TILE_B = 16  # the batch tile (wgmma N) is padded to at least this many rows


@dataclasses.dataclass(frozen=True)
class MosaicWeight:
    w: jax.Array  # (K // group, N, group) int4 signed codes
    scale: jax.Array  # (K // group, N) bfloat16
    offset: jax.Array | None  # (K // group, N) bfloat16 integers 8 - zero, asymmetric int only
    group: int
    method: str  # "int" | "nf4"

    @property
    def shape(self) -> tuple[int, int]:
        ng, n, g = self.w.shape
        return n, ng * g

    @property
    def nbytes(self) -> int:
        n, k = self.shape
        extra = self.scale.size * 2 * (1 if self.offset is None else 2)
        return n * k // 2 + extra


jax.tree_util.register_dataclass(MosaicWeight, data_fields=["w", "scale", "offset"], meta_fields=["group", "method"])


@dataclasses.dataclass(frozen=True)
class MosaicBlocks:
    block_b: int | None = None  # batch tile (wgmma N): None = the batch padded to a power of two in [16, 128]
    split_k: int = 1  # programs along K (partials summed in float32 by XLA)
    stages: int = 4  # pipeline depth (max_concurrent_steps)
    groups: int = 1  # groups of g input columns per pipeline step
    wg_rows: int = 64  # output rows per compute warpgroup (wgmma M: 64 or 128)
    acc: str = "value"  # "value": the accumulator carried through the pipeline; "ref": one accumulator ref


def check_mosaic(pw: PackedWeight) -> None:
    """KernelLayoutError naming every reason the Mosaic form cannot take this weight."""
    cfg = pw.cfg
    problems = []
    if cfg.method not in MOSAIC_METHODS:
        problems.append(f"mode='mosaic' takes int4 and NF4 weights, not {cfg.name}")
    elif pw.bits_dict.get("q") != 4:
        problems.append(f"mode='mosaic' needs 4-bit codes, {cfg.name} has {pw.bits_dict.get('q')}")
    g = getattr(cfg, "group_size", None) or pw.cols
    if g not in (64, 128, 256):
        problems.append(f"group_size={g}: the Mosaic form steps one group per pipeline stage, use 64, 128 or 256")
    if pw.rows % (COMPUTE_WGS * 64):
        problems.append(f"the {pw.rows} output features must be a multiple of {COMPUTE_WGS * 64}")
    if problems:
        raise KernelLayoutError("; ".join(problems))


def _codes(pw: PackedWeight) -> jax.Array:
    """(R, C) uint32 codes of the 4-bit field q (code e of a word at bits [4e, 4e + 4))."""
    (words,) = pw.elem["q"]
    shifts = jnp.arange(8, dtype=jnp.uint32) * 4
    return ((words[:, :, None] >> shifts) & jnp.uint32(15)).reshape(pw.rows, pw.cols)


def prepare_mosaic(pw: PackedWeight) -> MosaicWeight:
    """The Mosaic form's layout of a 4-bit int / NF4 PackedWeight (one XLA pass; nothing is dequantized)."""
    check_mosaic(pw)
    cfg = pw.cfg
    g = getattr(cfg, "group_size", None) or pw.cols
    ng = pw.cols // g
    flat = jnp.arange(pw.rows * ng, dtype=jnp.int32).reshape(pw.rows, ng)
    (mult,), offset = decoder(cfg).scales(pw, pw.group, tables_for(cfg), flat)  # (R, ng) float32
    codes = _codes(pw).astype(jnp.int32)
    off = None
    if cfg.method == "int" and cfg.symmetric:
        signed = codes - (2 ** (cfg.bits - 1) - 1)
    else:
        signed = codes - 8
        if offset is not None:
            off = (8.0 - offset).T.astype(jnp.bfloat16)
    w3 = signed.reshape(pw.rows, ng, g).transpose(1, 0, 2)
    return MosaicWeight(w=w3.astype(jnp.int4), scale=mult.T.astype(jnp.bfloat16), offset=off, group=g,
                        method=cfg.method)


def nf4_level(v: jax.Array) -> jax.Array:
    """NF4 level of v = code - 8 (any float dtype; exact small integers in [-8, 7]): a balanced select tree."""
    levels = [float(x) for x in qg.NF4_LEVELS]

    def tree(lo: int, hi: int):  # levels[lo:hi] for codes lo..hi-1
        if hi - lo == 1:
            return jnp.asarray(levels[lo], v.dtype)
        mid = (lo + hi) // 2
        return jnp.where(v >= jnp.asarray(mid - 8, v.dtype), tree(mid, hi), tree(lo, mid))

    return tree(0, 16)


def decode_model(mw: MosaicWeight) -> jax.Array:
    """(N, K) float32 weight exactly as the kernel feeds wgmma (bf16 products), in jnp: the kernel's reference."""
    ng, n, g = mw.w.shape
    v = mw.w.astype(jnp.float32).astype(jnp.bfloat16).transpose(1, 0, 2).reshape(n, ng * g)
    if mw.method == "nf4":
        v = nf4_level(v)
    if mw.offset is not None:
        v = v + jnp.repeat(mw.offset.T, mw.group, axis=1)
    return (v * jnp.repeat(mw.scale.T, mw.group, axis=1)).astype(jnp.float32)


def tile_b_for(batch: int, blocks: MosaicBlocks) -> int:
    if blocks.block_b is not None:
        tb = blocks.block_b
    else:
        tb = min(128, max(MIN_TILE_B, 1 << max(0, int(np.ceil(np.log2(max(batch, 1)))))))
    if tb % 8 or tb < MIN_TILE_B or tb > 256:
        raise KernelLayoutError(f"block_b={tb}: the batch tile (wgmma N) must be a multiple of 8 in [16, 256]")
    return tb


def check_blocks(mw: MosaicWeight, batch: int, blocks: MosaicBlocks) -> tuple[int, int]:
    """(batch tile, steps per program), or KernelLayoutError naming every problem."""
    n, k = mw.shape
    ng = k // mw.group
    problems = []
    if blocks.wg_rows not in (64, 128) or n % (COMPUTE_WGS * blocks.wg_rows):
        problems.append(f"wg_rows={blocks.wg_rows}: use 64 or 128 with {COMPUTE_WGS} x wg_rows dividing the {n} "
                        "output features")
    if blocks.acc not in ("value", "ref"):
        problems.append(f"acc={blocks.acc!r}: use 'value' or 'ref'")
    if ng % (blocks.split_k * blocks.groups):
        problems.append(f"split_k={blocks.split_k} x groups={blocks.groups} must divide the {ng} groups along K")
    if problems:
        raise KernelLayoutError("; ".join(problems))
    return tile_b_for(batch, blocks), ng // (blocks.split_k * blocks.groups)


def mosaic_matmul(x: jax.Array, mw: MosaicWeight, blocks: MosaicBlocks | None = None) -> jax.Array:
    """y (B, N) = x (B, K) @ W^T with W the dequantized weight of mw; bf16 x, float32 accumulation, y in x.dtype."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    blocks = blocks or MosaicBlocks()
    n, k = mw.shape
    b, kx = x.shape
    if kx != k:
        raise KernelLayoutError(f"x has {kx} features, the weight {k}")
    tb, steps = check_blocks(mw, b, blocks)
    g, gs_n, wr, sk = mw.group, blocks.groups, blocks.wg_rows, blocks.split_k
    bp = -(-b // tb) * tb
    xp = jnp.pad(x.astype(jnp.bfloat16), ((0, bp - b), (0, 0)))
    cta_n = COMPUTE_WGS * wr
    nf4 = mw.method == "nf4"

    x_swz = plgpu.find_swizzle(gs_n * g * 16, "rhs")
    w_swz = plgpu.find_swizzle(g * 4, "lhs")
    o_swz = plgpu.find_swizzle(tb * 32, "out")
    x_tr = (plgpu.TilingTransform((8, x_swz * 8 // 16)), plgpu.SwizzleTransform(x_swz))
    w_tr = (plgpu.TilingTransform((8, w_swz * 8 // 4)), plgpu.SwizzleTransform(w_swz))
    o_tr = (plgpu.TilingTransform((8, o_swz * 8 // 32)), plgpu.SwizzleTransform(o_swz))
    row_layout = plgpu.Layout.WGMMA.reduce(1)

    def kernel(x_gmem, w_gmem, s_gmem, *rest, o_smem):
        *off_gmem, o_gmem = rest
        ni, bi, si = lax.axis_index("n"), lax.axis_index("b"), lax.axis_index("s")
        wg = lax.axis_index("wg")
        rows = pl.ds(wg * wr, wr)

        def weight(j, w_smem, s_smem, o_ref):
            """(wr, g) bf16 tile of group j of this step, as wgmma reads it."""
            w = plgpu.load(w_smem, (j, rows), layout=plgpu.Layout.WGMMA_UPCAST_4X)
            w = plgpu.layout_cast(w, plgpu.Layout.WGMMA).astype(jnp.bfloat16)
            if nf4:
                w = nf4_level(w)
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
