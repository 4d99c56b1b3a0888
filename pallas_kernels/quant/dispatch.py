"""The public fused dequantize-matmul: quant_matmul(x, pw) checks the blocks and picks the kernel form.

    y = quant_matmul(x, prepare(q))          # x (B, K) bf16, q quantizes a (K, N) Flax kernel -> y (B, N)

Forms: "vec" (GEMV, at most 8 batch rows per program: gemv.py), "fma" and "dot" (tiled: matmul.py), "tc"
(tensor cores fed from registers by bit planes, int and NF4 only: tc.py). With no blocks, quant_matmul picks
form and blocks from the ROUTES table (choose(pw, batch); HQF_QUANT_DISPATCH=print prints each choice when a
shape is traced). An explicit config with mode="auto" picks among vec/fma/dot by batch through AUTO_FORMS.
Row-sorted weights (sort=true) need gather.gather_matmul, which applies the stored permutation.

Reference: hqf_jax.ops.quant_matmul.dequant_matmul_ref(x, dequantize_matrix(q)).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax

from pallas_kernels.quant.gemv import ACCS, MAX_VEC_BATCH, supports_vec, vec_layout, vec_matmul
from pallas_kernels.quant.layout import KernelLayoutError, PackedWeight, check_blocks
from pallas_kernels.quant.matmul import tile_matmul
from pallas_kernels.quant.routes import ROUTES, Route
from pallas_kernels.quant.tc import (MIN_DOT_K, SMEM_LIMIT_BYTES, check_tc, tc_block_m, tc_matmul, tc_smem_bytes,
                                     tc_width)

# ROUTES and Route are re-exported here: the table lives in pallas_kernels/quant/routes.py

MODES = ("auto", "dot", "fma", "vec", "tc")

# mode="auto": the first row whose batch bound holds (None: any batch) and whose form fits the weight wins.
AUTO_FORMS = (
    (2, "vec"),  # GEMV: when the weight's vec layout fits block_k and block_b <= MAX_VEC_BATCH
    (2, "fma"),  # tiled, broadcast multiply + row sums: no padding of the batch to 16 rows
    (None, "dot"),  # tiled, tl.dot on the tensor cores, batch padded to 16-64 rows
)

# default_blocks, batch <= DEFAULT_VEC_MAX_BATCH: the GEMV form with one-warp programs of one output row (the
# H200 bench's best at 4096 x 4096-11008), block_k the first of DEFAULT_VEC_BLOCK_K that the layout allows.
DEFAULT_VEC_MAX_BATCH = 2
DEFAULT_VEC_BLOCK_K = (1024, 512, 256, 128, 64, 32)


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    block_n: int = 64
    block_k: int = 128
    block_b: int | None = None  # None: the padded batch (dot: >= 16, at most 64; fma: next power of two)
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    mode: str = "auto"  # "dot" (tl.dot, batch padded to 16), "fma" (broadcast multiply + row sums),
    #                     "vec" (GEMV form, block_b <= 8 rows per program: pallas_kernels/quant/gemv.py),
    #                     "auto" (AUTO_FORMS: vec if the layout fits, else fma, for batch <= 2; dot above)
    levels: str = "exp2"  # phi-grid levels: "exp2" computes +-r**-k, "table" gathers them from a small table
    acc: str = "slot"  # mode vec only: "slot" one column slot at a time in the packed words' shape (gemv.py),
    #                    "step" reduces the decoded tile each block_k step, "tile" accumulates it, reduces once
    lut: str = "where"  # mode tc, NF4 only: levels by a select tree on the code bits ("where") or a table ("load")
    swap: bool = True  # mode tc only: y^T = W x^T (weight tile on the tensor core's wide M side; see tc.py)
    cvt: str = "f32"  # mode tc only: decode in float32 then cast ("f32") or in bf16 throughout ("bf16", <= 4-bit)

    def resolved_mode(self, batch: int, vec_ok: bool = False) -> str:
        if self.mode not in MODES or self.levels not in ("exp2", "table") or self.acc not in ACCS:
            raise KernelLayoutError(f"mode={self.mode!r} levels={self.levels!r} acc={self.acc!r}: use mode "
                                    f"{'|'.join(MODES)}, levels exp2|table, acc {'|'.join(ACCS)}")
        if self.mode != "auto":
            return self.mode
        vec_ok = vec_ok and (self.block_b or 1) <= MAX_VEC_BATCH
        for bound, form in AUTO_FORMS:
            if (bound is None or batch <= bound) and (form != "vec" or vec_ok):
                return form
        raise AssertionError("AUTO_FORMS ends with a row for any batch")


def default_blocks(pw: PackedWeight, batch: int) -> BlockConfig:
    """A reasonable starting point; the quant kernel benchmark sweeps around it."""
    if batch <= DEFAULT_VEC_MAX_BATCH:
        for bk in DEFAULT_VEC_BLOCK_K:
            try:
                check_blocks(pw, 1, bk, 1, min_block_n=1)
                vec_layout(pw, bk)
            except KernelLayoutError:
                continue
            return BlockConfig(block_n=1, block_k=bk, num_warps=1, num_stages=4, mode="vec")
    g = pw.cfg.group_size or pw.cols
    bk = next((c for c in (128, 64, 32) if pw.cols % c == 0 and (g % c == 0 or c % g == 0)), 32)
    bn = 32 if batch <= 16 else 64
    while pw.rows % bn:
        bn //= 2
    split = 1
    for s in (4, 2):
        if batch <= 16 and pw.cols % (bk * s) == 0 and pw.rows // bn < 256:
            split = s
            break
    return BlockConfig(block_n=max(bn, 16), block_k=bk, split_k=split)


def default_tc_blocks(pw: PackedWeight, batch: int, n_sm: int = 132) -> BlockConfig:
    """Tensor-core blocks: batch tile 16-64, 128 output rows, block_k the first of 256/128 (/64 for int8) that fits,
    split_k until the grid has about n_sm programs (an H200 has 132 SMs)."""
    e = 32 // tc_width(pw)
    bm = tc_block_m(BlockConfig(), batch)
    bn = 128
    while pw.rows % bn and bn > 16:
        bn //= 2
    bk = next((c for c in (256, 128, 64) if c >= 16 * e and pw.cols % c == 0), 16 * e)
    return fit_smem(pw, BlockConfig(block_n=bn, block_k=bk, block_b=bm, split_k=auto_split(pw, batch, bm, bn, bk, n_sm),
                                    num_warps=4, num_stages=3, mode="tc"), batch)


def fit_smem(pw: PackedWeight, blocks: BlockConfig, batch: int, limit: int = SMEM_LIMIT_BYTES) -> BlockConfig:
    """tc blocks whose shared memory (tc.tc_smem_bytes) fits limit: num_stages down to 2, then block_k halved
    while each plane keeps tl.dot's minimum K, then 1 stage; KernelLayoutError if nothing fits."""
    w = tc_width(pw)
    e = 32 // w
    while tc_smem_bytes(blocks, w, batch) > limit:
        if blocks.num_stages > 2:
            blocks = dataclasses.replace(blocks, num_stages=blocks.num_stages - 1)
        elif blocks.block_k // 2 >= e * MIN_DOT_K and (blocks.block_k // 2) % e == 0:
            blocks = dataclasses.replace(blocks, block_k=blocks.block_k // 2)
        elif blocks.num_stages > 1:
            blocks = dataclasses.replace(blocks, num_stages=1)
        else:
            raise KernelLayoutError(f"mode='tc': blocks {blocks} need {tc_smem_bytes(blocks, w, batch)} bytes of "
                                    f"shared memory, over the {limit} limit: lower block_n or block_b")
    return blocks


def auto_split(pw: PackedWeight, batch: int, bm: int, bn: int, bk: int, n_sm: int = 132) -> int:
    """split_k (1-8) doubling while the grid has fewer than n_sm programs and each split keeps >= 4 K steps."""
    programs = -(-batch // bm) * max(1, pw.rows // bn)
    split = 1
    while (split < 8 and programs * split < n_sm and pw.cols % (bk * split * 2) == 0
           and pw.cols // (bk * split * 2) >= 4):
        split *= 2
    return split


def _fits(pw: PackedWeight, blocks: BlockConfig, batch: int) -> bool:
    """Whether the blocks a route gives can run this weight (else the next route row is tried)."""
    try:
        if blocks.mode == "vec":
            vec_layout(pw, blocks.block_k)
            return batch <= MAX_VEC_BATCH
        if blocks.mode == "tc":
            check_tc(pw, blocks)
            check_blocks(pw, blocks.block_n, blocks.block_k, blocks.split_k, group_check=False)
        else:
            check_blocks(pw, blocks.block_n, blocks.block_k, blocks.split_k)
        return True
    except KernelLayoutError:
        return False


def route_blocks(pw: PackedWeight, batch: int, route: Route) -> BlockConfig:
    """The row's blocks over BlockConfig() (as bench.quant_kernels prints them), or the form's defaults when the
    row has none; tc blocks shrunk to fit SMEM_LIMIT_BYTES (fit_smem)."""
    if route.blocks is not None:
        blocks = BlockConfig(mode=route.form, **route.blocks)
    elif route.form == "tc":
        blocks = default_tc_blocks(pw, batch)
    elif route.form == "vec":
        blocks = default_blocks(pw, 1)
        if blocks.mode != "vec":
            raise KernelLayoutError("the vec layout does not fit this weight")
    else:
        blocks = dataclasses.replace(default_blocks(pw, max(batch, DEFAULT_VEC_MAX_BATCH + 1)), mode=route.form)
    return fit_smem(pw, blocks, batch) if route.form == "tc" else blocks


def choose(pw: PackedWeight, batch: int) -> tuple[BlockConfig, int]:
    """(blocks, index of the ROUTES row) that quant_matmul uses for this weight and batch when given no blocks."""
    for n, r in enumerate(ROUTES):
        if r.method not in ("*", pw.cfg.method) or (r.max_batch is not None and batch > r.max_batch):
            continue
        if r.shape is not None and tuple(r.shape) != (pw.cols, pw.rows):
            continue
        try:
            blocks = route_blocks(pw, batch, r)
        except KernelLayoutError:  # e.g. tc on a phi-grid weight
            continue
        if _fits(pw, blocks, batch):
            return blocks, n
    return default_blocks(pw, batch), -1


def explain(pw: PackedWeight, batch: int) -> str:
    """One line: what quant_matmul picks for this weight and batch, and from which ROUTES row."""
    blocks, n = choose(pw, batch)
    row = f"ROUTES[{n}]" if n >= 0 else "no ROUTES row (default_blocks)"
    return (f"quant_matmul {pw.cfg.name} {pw.cols}x{pw.rows} batch {batch}: {row} -> mode={blocks.mode} "
            f"n{blocks.block_n} k{blocks.block_k} b{blocks.block_b or '-'} s{blocks.split_k} w{blocks.num_warps} "
            f"st{blocks.num_stages}")


@functools.partial(jax.jit, static_argnames=("blocks", "interpret"))
def quant_matmul(x: jax.Array, pw: PackedWeight, *, blocks: BlockConfig | None = None,
                 interpret: bool = False) -> jax.Array:
    """y (B, R) = x (B, C) @ dequantize(pw)^T, fused. x is cast to bf16; y has x's dtype."""
    if x.ndim != 2:
        raise KernelLayoutError(f"x must be (batch, features), got shape {x.shape}: flatten the leading axes")
    b, k = x.shape
    if k != pw.cols:
        raise KernelLayoutError(f"x has {k} features but the weight expects {pw.cols}")
    if b == 0:
        raise KernelLayoutError("x has no rows (batch 0)")
    if "perm" in pw.elem:
        raise KernelLayoutError(f"{pw.cfg.name} is row-sorted (sort=true): use gather_matmul, which applies the "
                                "stored permutation")
    if blocks is None:
        blocks, _ = choose(pw, b)
        if os.environ.get("HQF_QUANT_DISPATCH") == "print":
            print(explain(pw, b))  # at trace time: once per (weight shape, batch)
    mode = blocks.resolved_mode(b, supports_vec(pw, blocks.block_k))
    if mode == "tc":
        check_tc(pw, blocks)
        check_blocks(pw, blocks.block_n, blocks.block_k, blocks.split_k, group_check=False)
        return tc_matmul(x, pw, blocks, interpret)
    check_blocks(pw, blocks.block_n, blocks.block_k, blocks.split_k, min_block_n=1 if mode == "vec" else 16)
    if mode == "vec":
        return vec_matmul(x, pw, blocks, interpret)
    return tile_matmul(x, pw, blocks, mode, interpret)
