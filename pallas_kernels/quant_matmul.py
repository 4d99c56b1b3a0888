"""Fused dequantize-matmul (weight-only quantization, bf16 activations) for the packed phi-grid + deviation
format and for the int / NF4 baselines, as a Pallas kernel for the GPU (Triton backend).

    y = quant_matmul(x, prepare(q))          # x (B, K) bf16, q quantizes a (K, N) Flax kernel -> y (B, N)

Each program owns block_n output features and a 1/split_k share of K; it walks K in block_k steps, reads the
packed words of a (block_n, block_k) tile, decodes them in registers (shift/mask, exp2 for grid levels, gather
loads for the NF4 table and group scales) and feeds a bf16 tl.dot with float32 accumulation (mode "dot": batch
padded to a power of two >= 16, since tl.dot needs >= 16 rows) or, for batch 1-2, a broadcast multiply and row
sum without padding (mode "fma"), or the GEMV form for small batches (mode "vec", at most 8 rows per program,
the default at batch <= 2: pallas_kernels/quant_gemv.py). The dequantized weight never goes to HBM. split_k
partial sums are added by XLA afterwards (one small (split_k, B, N) f32 array). Row-sorted weights (sort=true)
need gather_matmul.

Reference: hqf_jax.ops.quant_matmul.dequant_matmul_ref(x, dequantize_matrix(q)).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.quant_common import (
    KernelLayoutError,
    PackedWeight,
    check_blocks,
    decode_tile,
    next_pow2,
    prepare,
    tables_for,
)
from pallas_kernels.quant_gemv import ACCS, MAX_VEC_BATCH, supports_vec, vec_layout, vec_matmul

__all__ = ["BlockConfig", "default_blocks", "quant_matmul", "prepare", "KernelLayoutError"]


MODES = ("auto", "dot", "fma", "vec")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    block_n: int = 64
    block_k: int = 128
    block_b: int | None = None  # None: the padded batch (dot: >= 16, at most 64; fma: next power of two)
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    mode: str = "auto"  # "dot" (tl.dot, batch padded to 16), "fma" (broadcast multiply + row sums),
    #                     "vec" (GEMV form, block_b <= 8 rows per program: pallas_kernels/quant_gemv.py),
    #                     "auto" (vec if the layout fits, else fma, for batch <= 2; dot above)
    levels: str = "exp2"  # phi-grid levels: "exp2" computes +-r**-k, "table" gathers them from a small table
    acc: str = "slot"  # mode vec only: "slot" one column slot at a time in the packed words' shape (quant_gemv),
    #                    "step" reduces the decoded tile each block_k step, "tile" accumulates it, reduces once

    def resolved_mode(self, batch: int, vec_ok: bool = False) -> str:
        if self.mode not in MODES or self.levels not in ("exp2", "table") or self.acc not in ACCS:
            raise KernelLayoutError(f"mode={self.mode!r} levels={self.levels!r} acc={self.acc!r}: use mode "
                                    f"{'|'.join(MODES)}, levels exp2|table, acc {'|'.join(ACCS)}")
        if self.mode == "auto":
            vec_ok = vec_ok and (self.block_b or 1) <= MAX_VEC_BATCH
            return ("vec" if vec_ok else "fma") if batch <= 2 else "dot"
        return self.mode


def default_blocks(pw: PackedWeight, batch: int) -> BlockConfig:
    """A reasonable starting point; bench/quant_kernels.py sweeps around it. Batch <= 2: the GEMV form with
    one-warp programs of one output row (the H200 bench's best at 4096 x 4096-11008), when the layout allows."""
    if batch <= 2:
        for bk in (1024, 512, 256, 128, 64, 32):
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


def _flatten(pw: PackedWeight, tables: dict):
    elem_names = sorted(pw.elem)
    group_names = sorted(pw.group)
    table_names = sorted(tables)
    arrays = [a for n in elem_names for a in pw.elem[n]] + [a for n in group_names for a in pw.group[n]]
    arrays += [tables[n] for n in table_names]
    return elem_names, group_names, table_names, arrays


def _unflatten(refs, pw: PackedWeight, elem_names, group_names, table_names):
    refs = list(refs)
    elem, group, tables = {}, {}, {}
    for n in elem_names:
        k = len(pw.elem[n])
        elem[n], refs = refs[:k], refs[k:]
    for n in group_names:
        k = len(pw.group[n])
        group[n], refs = refs[:k], refs[k:]
    for n in table_names:
        tables[n], refs = refs[0], refs[1:]
    assert not refs
    return elem, group, tables


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
    bn, bk, split = blocks.block_n, blocks.block_k, blocks.split_k
    tables = tables_for(pw.cfg, blocks.levels)
    elem_names, group_names, table_names, arrays = _flatten(pw, tables)
    if mode == "vec":
        return vec_matmul(x, pw, blocks, arrays, (elem_names, group_names, table_names), interpret)
    if mode == "dot":
        bb = blocks.block_b or min(max(16, next_pow2(b)), 64)
    else:
        bb = blocks.block_b or min(next_pow2(b), 8)
    bp = -(-b // bb) * bb
    xp = jnp.zeros((bp, k), jnp.bfloat16).at[:b].set(x.astype(jnp.bfloat16))
    kspan = k // split
    nk = kspan // bk
    n_elem = sum(len(pw.elem[n]) for n in elem_names)

    def kernel(x_ref, *refs):
        o_ref = refs[-1]
        elem, group, tabs = _unflatten(refs[:-1], pw, elem_names, group_names, table_names)
        i = pl.program_id(0)
        s = pl.program_id(1)

        def body(t, acc):
            k0 = t * bk
            xt = x_ref[:, pl.ds(pl.multiple_of(k0, bk), bk)]
            w = decode_tile(pw, elem, group, tabs, i * bn, k0, s * kspan + k0, bn, bk)
            if mode == "fma":  # small batch: no padding to 16 rows, no tensor core
                wf = w.astype(jnp.bfloat16).astype(jnp.float32)
                return acc + jnp.sum(xt.astype(jnp.float32)[:, None, :] * wf[None, :, :], axis=2)
            return acc + lax.dot_general(
                xt, w.astype(jnp.bfloat16), (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
            )

        o_ref[...] = lax.fori_loop(0, nk, body, jnp.zeros((bb, bn), jnp.float32))

    in_specs = [pl.BlockSpec((bb, kspan), lambda i, s, j: (j, s))]
    for a in arrays[:n_elem]:
        in_specs.append(pl.BlockSpec((bn, a.shape[1] // split), lambda i, s, j: (i, s)))
    in_specs += [pl.no_block_spec] * (len(arrays) - n_elem)
    out = pl.pallas_call(
        kernel,
        grid=(pw.rows // bn, split, bp // bb),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((None, bb, bn), lambda i, s, j: (s, j, i)),
        out_shape=jax.ShapeDtypeStruct((split, bp, pw.rows), jnp.float32),
        compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages),
        interpret=interpret,
        name=f"quant_matmul_{pw.cfg.method}_{mode}",
    )(xp, *arrays)
    y = out[0] if split == 1 else jnp.sum(out, axis=0)
    return y[:b].astype(x.dtype)
