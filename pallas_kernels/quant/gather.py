"""Row-sorted gather matmul y[b, i] = sum_j S[i, j] * x[b, P[i, j]] as a Pallas kernel (Triton backend).

S is a row-sorted quantized weight (any codec with sort=True; in practice the phi-grid) decoded in registers
exactly as in the tiled form (decode.decode_tile), P its stored permutation (ceil(log2 K) bits per weight,
packed). Each program owns block_n rows and a share of K; per block_k step it decodes S and P tiles, gathers
x^T[P] (block_n, block_k, block_b) with one gather load and reduces over the tile. There is no tensor-core
product here (every row gathers different inputs), so this kernel is bound by the gather and the decode, not by
weight bytes: the benchmark measures by how much.

Reference: hqf_jax.ops.quant_matmul.gather_matmul_ref(x, sorted dequantized S, P).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.quant.decode import decode_tile, read_elem, tables_for
from pallas_kernels.quant.layout import KernelLayoutError, PackedWeight, check_blocks, flatten, next_pow2, unflatten

__all__ = ["GatherBlockConfig", "gather_matmul"]


@dataclasses.dataclass(frozen=True)
class GatherBlockConfig:
    block_n: int = 16
    block_k: int = 32
    block_b: int | None = None  # None: the padded batch, at most 16
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    levels: str = "exp2"  # phi-grid levels: "exp2" or "table" (see dispatch.BlockConfig)


@functools.partial(jax.jit, static_argnames=("blocks", "interpret"))
def gather_matmul(x: jax.Array, pw: PackedWeight, *, blocks: GatherBlockConfig | None = None,
                  interpret: bool = False) -> jax.Array:
    """y (B, R) for a row-sorted packed weight (pw.cfg.sort must be True). y has x's dtype."""
    if not getattr(pw.cfg, "sort", False) or "perm" not in pw.elem:
        raise KernelLayoutError(f"gather_matmul needs a row-sorted weight (sort=true), got {pw.cfg.name}")
    b, k = x.shape
    if k != pw.cols:
        raise KernelLayoutError(f"x has {k} features but the weight expects {pw.cols}")
    blocks = blocks or GatherBlockConfig()
    check_blocks(pw, blocks.block_n, blocks.block_k, blocks.split_k)
    bn, bk, split = blocks.block_n, blocks.block_k, blocks.split_k
    bb = blocks.block_b or min(next_pow2(b), 16)
    bp = -(-b // bb) * bb
    xt = jnp.zeros((k, bp), jnp.bfloat16).at[:, :b].set(x.astype(jnp.bfloat16).T)
    kspan = k // split
    nk = kspan // bk
    perm_bits = pw.bits_dict["perm"]
    tables = tables_for(pw.cfg, blocks.levels)
    elem_names, group_names, table_names, arrays = flatten(pw, tables)
    n_elem = sum(len(pw.elem[n]) for n in elem_names)

    def kernel(xt_ref, *refs):
        o_ref = refs[-1]
        elem, group, tabs = unflatten(refs[:-1], pw, elem_names, group_names, table_names)
        i = pl.program_id(0)
        s = pl.program_id(1)
        j = pl.program_id(2)

        def body(t, acc):
            k0 = t * bk
            w = decode_tile(pw, elem, group, tabs, i * bn, k0, s * kspan + k0, bn, bk)
            w = w.astype(jnp.bfloat16).astype(jnp.float32)
            p = read_elem(elem["perm"], perm_bits, k0, bk).astype(jnp.int32)
            xg = xt_ref[p, pl.ds(j * bb, bb)].astype(jnp.float32)  # (bn, bk, bb)
            return acc + jnp.sum(w[:, :, None] * xg, axis=1)

        o_ref[...] = lax.fori_loop(0, nk, body, jnp.zeros((bn, bb), jnp.float32))

    in_specs = [pl.no_block_spec]
    for a in arrays[:n_elem]:
        in_specs.append(pl.BlockSpec((bn, a.shape[1] // split), lambda i, s, j: (i, s)))
    in_specs += [pl.no_block_spec] * (len(arrays) - n_elem)
    out = pl.pallas_call(
        kernel,
        grid=(pw.rows // bn, split, bp // bb),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((None, bn, bb), lambda i, s, j: (s, i, j)),
        out_shape=jax.ShapeDtypeStruct((split, pw.rows, bp), jnp.float32),
        compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages),
        interpret=interpret,
        name="gather_matmul",
    )(xt, *arrays)
    y = out[0] if split == 1 else jnp.sum(out, axis=0)
    return y.T[:b].astype(x.dtype)
