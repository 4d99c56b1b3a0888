"""The public fused dequantize-matmul: quant_matmul(x, pw) checks the blocks and picks the kernel form.

    y = quant_matmul(x, prepare(q))          # x (B, K) bf16, q quantizes a (K, N) Flax kernel -> y (B, N)

Forms: "vec" (GEMV, at most 8 batch rows per program: gemv.py), "fma" and "dot" (tiled: matmul.py). A config
with mode="auto" picks by batch through AUTO_FORMS; default_blocks picks the block sizes when none are given.
Row-sorted weights (sort=true) need gather.gather_matmul, which applies the stored permutation.

Reference: hqf_jax.ops.quant_matmul.dequant_matmul_ref(x, dequantize_matrix(q)).
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from pallas_kernels.quant.gemv import ACCS, MAX_VEC_BATCH, supports_vec, vec_layout, vec_matmul
from pallas_kernels.quant.layout import KernelLayoutError, PackedWeight, check_blocks
from pallas_kernels.quant.matmul import tile_matmul

MODES = ("auto", "dot", "fma", "vec")

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


@functools.partial(jax.jit, static_argnames=("blocks", "interpret"))
def quant_matmul(x: jax.Array, pw: PackedWeight, *, blocks: BlockConfig | None = None,
                 interpret: bool = False) -> jax.Array:
    """y (B, R) = x (B, C) @ dequantize(pw)^T, fused. x is cast to bf16; y has x's dtype."""
    b, k = x.shape
    if k != pw.cols:
        raise KernelLayoutError(f"x has {k} features but the weight expects {pw.cols}")
    if "perm" in pw.elem:
        raise KernelLayoutError(f"{pw.cfg.name} is row-sorted (sort=true): use gather_matmul, which applies the "
                                "stored permutation")
    blocks = blocks or default_blocks(pw, b)
    mode = blocks.resolved_mode(b, supports_vec(pw, blocks.block_k))
    check_blocks(pw, blocks.block_n, blocks.block_k, blocks.split_k, min_block_n=1 if mode == "vec" else 16)
    if mode == "vec":
        return vec_matmul(x, pw, blocks, interpret)
    return tile_matmul(x, pw, blocks, mode, interpret)
