"""Tiled form of the fused dequantize-matmul (modes "dot" and "fma"), as a Pallas kernel for the GPU (Triton
backend). Called by pallas_kernels.quant.dispatch.quant_matmul after its checks.

Each program owns block_n output features and a 1/split_k share of K; it walks K in block_k steps, reads the
packed words of a (block_n, block_k) tile, decodes them in registers (decode.decode_tile: shift/mask, exp2 for
grid levels, gather loads for the NF4 table and group scales) and feeds a bf16 tl.dot with float32 accumulation
(mode "dot": batch padded to a power of two >= 16, since tl.dot needs >= 16 rows) or, for batch 1-2, a
broadcast multiply and row sum without padding (mode "fma"). The dequantized weight never goes to HBM. split_k
partial sums are added by XLA afterwards (one small (split_k, B, N) f32 array).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.quant.decode import decode_tile, tables_for
from pallas_kernels.quant.layout import PackedWeight, flatten, next_pow2, unflatten


def tile_matmul(x: jax.Array, pw: PackedWeight, blocks, mode: str, interpret: bool) -> jax.Array:
    """y (B, R) = x (B, C) @ dequantize(pw)^T with mode "dot" or "fma"; blocks already checked (BlockConfig)."""
    b, k = x.shape
    bn, bk, split = blocks.block_n, blocks.block_k, blocks.split_k
    elem_names, group_names, table_names, arrays = flatten(pw, tables_for(pw.cfg, blocks.levels))
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
        elem, group, tabs = unflatten(refs[:-1], pw, elem_names, group_names, table_names)
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
