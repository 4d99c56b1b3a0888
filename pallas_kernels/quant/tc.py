"""Tensor-core form (mode "tc") of the fused dequantize-matmul for int and NF4 weights at batch >= 8: Pallas,
Triton backend, so that the decoded weight feeds tl.dot (wgmma on Hopper, mma on Ampere) straight from
registers. Called by pallas_kernels.quant.dispatch.quant_matmul after its checks.

Bit planes instead of reshapes. A packed word of a w-bit field holds E = 32 / w consecutive columns (code e at
bits [e*w, (e+1)*w)). A block_k tile of one program's rows is (block_n, block_k / E) words, loaded as one 2-D
tile. Plane e of the tile (every word shifted right by e*w and masked) is a (block_n, block_k / E) tile of the
columns k0 + E*j + e: decoding it is one shift, one mask and the exponent trick (bitcast(code | 0x4B000000) -
(2^23 + zero)), NF4 a 16-entry lookup, and no reshape (a reshape in Triton goes through shared memory). The sum
over K does not care about column order, so the wrapper permutes x inside each block_k tile once (one fused XLA
op on a (B, K) array) to put the columns of plane e next to each other: the product is E dots of K = block_k / E
(>= 16, tl.dot's minimum) per step, accumulated in float32.

Group scales. When one group covers the whole tile (group_size a multiple of block_k) the dots run on the raw
centred codes (exact in bf16 for int) and the (block_n,) scales multiply the step's (block_n, block_m) partial
once ("post"); otherwise each word's scale is gathered once per step as a (block_n, block_k / E) tile and
multiplies every plane before the bf16 cast ("pre"). cvt="bf16" decodes in bf16 throughout (code | 0x4300 is the
bf16 128 + code; scales cast to bf16): half-width arithmetic that the compiler may pack two to a register. NF4's double-quantized absmax decodes per group exactly
as in the other forms (pallas_kernels/quant/decode.py: the shared scales() of each codec).

Operand order. With swap=True (default) the program computes y^T = W x^T: the weight tile is the left operand
(M = block_n, 64-256, the tensor core's wide side) and the batch the narrow one (N = block_m, 16-64), which is
what wgmma wants at small batch; the (block_n, block_m) result is transposed once per program at the end.
Grid: (batch tiles, row tiles, split_k) with the batch axis fastest, so programs that share a weight tile run
together and the second reads it from L2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from hqf_jax.ops import quant_grids as qg
from hqf_jax.ops import quant_pack as qp
from pallas_kernels.quant.decode import decoder, tables_for, u2f
from pallas_kernels.quant.layout import KernelLayoutError, PackedWeight, flatten, next_pow2, unflatten

TC_METHODS = ("int", "nf4")
LUTS = ("where", "load")  # NF4 level lookup: a select tree on the 4 code bits, or a gather load from a table
CVTS = ("f32", "bf16")  # decode arithmetic: float32 then one cast, or bf16 throughout (16-bit ops)
MIN_DOT_K = 16  # tl.dot's smallest K (bf16)
# The most shared memory one program may ask for: Hopper (H100/H200) lets a block opt into 227 KiB (the H200
# reports 232448 bytes). The dispatcher never picks tc blocks whose tc_smem_bytes exceeds it (dispatch.fit_smem).
SMEM_LIMIT_BYTES = 227 * 1024


def tc_width(pw: PackedWeight) -> int:
    """Code width of the weight's one per-weight field ("q"), or KernelLayoutError when the form cannot take it."""
    if pw.cfg.method not in TC_METHODS:
        raise KernelLayoutError(f"mode='tc' takes int and NF4 weights, not {pw.cfg.name}: use mode='dot'")
    parts = qp.split_widths(pw.bits_dict["q"])
    if len(parts) != 1 or parts[0][0] not in (2, 4, 8):
        raise KernelLayoutError(f"mode='tc' needs 2, 4 or 8-bit codes, {pw.cfg.name} has {pw.bits_dict['q']}: "
                                "use mode='dot'")
    return parts[0][0]


def check_tc(pw: PackedWeight, blocks) -> None:
    """Block sizes the tc form can run (KernelLayoutError naming every problem and its fix)."""
    e = 32 // tc_width(pw)
    g = pw.cfg.group_size or pw.cols
    bm, bk = blocks.block_b, blocks.block_k
    problems = []
    if bk % e or bk // e < MIN_DOT_K:
        problems.append(f"block_k={bk} must be a multiple of {e * MIN_DOT_K} ({e} codes per word x tl.dot's "
                        f"minimum K of {MIN_DOT_K})")
    if bm is not None and (bm < 16 or bm & (bm - 1)):
        problems.append(f"block_b={bm} (block_m) must be a power of two >= 16")
    if g % e:
        problems.append(f"group_size={g} must be a multiple of {e} (a packed word must not straddle two groups)")
    if blocks.lut not in LUTS:
        problems.append(f"lut={blocks.lut!r}: use one of {LUTS}")
    if blocks.cvt not in CVTS:
        problems.append(f"cvt={blocks.cvt!r}: use one of {CVTS}")
    if blocks.cvt == "bf16" and tc_width(pw) == 8:
        problems.append("cvt='bf16' takes codes below 128 (2 or 4 bits): use cvt='f32' for 8-bit codes")
    if problems:
        raise KernelLayoutError("mode='tc': " + "; ".join(problems))


def tc_block_m(blocks, batch: int) -> int:
    return blocks.block_b or min(max(16, next_pow2(batch)), 64)


def tc_smem_bytes(blocks, width: int, batch: int) -> int:
    """Shared memory the Triton lowering of the tc form asks for: num_stages copies of one K step's operands,
    each the packed words (block_n, block_k / E) uint32, the x tile (block_m, block_k) bf16 (all E planes) and one
    decoded bf16 plane (block_n, block_k / E) that the dot reads from shared memory. Calibrated on the H200:
    int8 with block_n 128, block_k 256, block_m 64, 3 stages asked for 245760 bytes (= this model), int4 at the
    same blocks (172032 here) ran."""
    e = 32 // width
    kp = blocks.block_k // e
    per_stage = blocks.block_n * kp * 4 + tc_block_m(blocks, batch) * blocks.block_k * 2 + blocks.block_n * kp * 2
    return blocks.num_stages * per_stage


def nf4_where(codes: jax.Array, dtype=jnp.float32) -> jax.Array:
    """NF4 level of 4-bit codes by a select tree on the code bits (15 selects, no memory access)."""
    vals = [dtype(float(v)) for v in qg.NF4_LEVELS]
    for bit in range(4):
        on = (codes & jnp.uint32(1 << bit)) != 0
        vals = [jnp.where(on, hi, lo) for lo, hi in zip(vals[0::2], vals[1::2])]
    return vals[0]


def permute_x(x: jax.Array, bk: int, e: int) -> jax.Array:
    """x (B, K) with the columns of each block_k tile reordered plane-major: tile column e*(bk/E) + j holds
    column E*j + e, so plane e's columns are one contiguous (B, bk/E) load."""
    b, k = x.shape
    return x.reshape(b, k // bk, bk // e, e).swapaxes(2, 3).reshape(b, k)


def tc_matmul(x: jax.Array, pw: PackedWeight, blocks, interpret: bool) -> jax.Array:
    """y (B, R) = x (B, C) @ dequantize(pw)^T; blocks already checked (check_blocks and check_tc)."""
    cfg = pw.cfg
    w = tc_width(pw)
    e = 32 // w
    b, k = x.shape
    bn, bk, split = blocks.block_n, blocks.block_k, blocks.split_k
    bm = tc_block_m(blocks, b)
    kp = bk // e  # words per tile row = K of each plane's dot
    g = cfg.group_size or pw.cols
    ng = pw.cols // g
    post = g % bk == 0
    swap = blocks.swap
    nf4_load = cfg.method == "nf4" and blocks.lut == "load"
    bf16 = blocks.cvt == "bf16"
    zero_sym = 2.0 ** (cfg.bits - 1) - 1 if cfg.method == "int" and cfg.symmetric else 0.0
    bp = -(-b // bm) * bm
    xp = x.astype(jnp.bfloat16)
    if bp != b:
        xp = jnp.zeros((bp, k), jnp.bfloat16).at[:b].set(xp)
    xp = permute_x(xp, bk, e)
    elem_names, group_names, table_names, arrays = flatten(pw, tables_for(cfg))
    n_elem = sum(len(pw.elem[n]) for n in elem_names)
    kspan = k // split
    nk = kspan // bk
    dec = decoder(cfg)
    out_dtype = x.dtype if split == 1 else jnp.float32

    def kernel(x_ref, *refs):
        o_ref = refs[-1]
        elem, group, tabs = unflatten(refs[:-1], pw, elem_names, group_names, table_names)
        q_ref = elem["q"][0]
        mask = jnp.uint32((1 << w) - 1)
        i = pl.program_id(1)
        s = pl.program_id(2)
        rows_c = i * bn + lax.broadcasted_iota(jnp.int32, (bn, 1), 0)
        rows_r = i * bn + lax.broadcasted_iota(jnp.int32, (1, bn), 1)

        def value(codes):
            if cfg.method == "nf4":
                if nf4_load:
                    v = tabs["nf4"][codes.astype(jnp.int32)]
                    return v.astype(jnp.bfloat16) if bf16 else v
                return nf4_where(codes, jnp.bfloat16 if bf16 else jnp.float32)
            if bf16:  # bf16 bit pattern 0x4300 | c is 128 + c (c < 128): exact, 16-bit ops
                f = lax.bitcast_convert_type(codes.astype(jnp.uint16) | jnp.uint16(0x4300), jnp.bfloat16)
                return f - jnp.bfloat16(128.0 + zero_sym)
            return u2f(codes, zero_sym)

        def prod(wt, xt):
            if swap:  # (bn, kp) x (bm, kp)^T -> (bn, bm)
                return lax.dot_general(wt, xt, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
            return lax.dot_general(xt, wt, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)

        def body(t, acc):
            k0 = t * bk
            kglob = s * kspan + k0
            words = q_ref[:, pl.ds(pl.multiple_of(t * kp, kp), kp)]  # (bn, kp) uint32
            if post:
                flat = rows_c * ng + kglob // g  # (bn, 1)
            else:
                flat = rows_c * ng + (kglob + e * lax.broadcasted_iota(jnp.int32, (1, kp), 1)) // g  # (bn, kp)
            mults, offset = dec.scales(pw, group, tabs, flat)
            part = None
            for p in range(e):
                codes = lax.shift_right_logical(words, jnp.uint32(p * w)) & mask if p else words & mask
                v = value(codes)
                if offset is not None:
                    v = v - (offset.astype(jnp.bfloat16) if bf16 else offset)
                if not post:
                    v = v * (mults[0].astype(jnp.bfloat16) if bf16 else mults[0])
                xt = x_ref[:, pl.ds(pl.multiple_of(k0 + p * kp, kp), kp)]  # (bm, kp) bf16
                d = prod(v.astype(jnp.bfloat16), xt)
                if post:
                    part = d if part is None else part + d
                else:
                    acc = acc + d
            if post:
                m = mults[0] if swap else dec.scales(pw, group, tabs, rows_r * ng + kglob // g)[0][0]  # (1, bn)
                acc = acc + part * m
            return acc

        acc0 = jnp.zeros((bn, bm) if swap else (bm, bn), jnp.float32)
        acc = lax.fori_loop(0, nk, body, acc0)
        if swap:
            acc = acc.T
        if split == 1:
            o_ref[...] = acc.astype(o_ref.dtype)
        else:
            o_ref[0] = acc

    in_specs = [pl.BlockSpec((bm, kspan), lambda j, i, s: (j, s))]
    for a in arrays[:n_elem]:
        in_specs.append(pl.BlockSpec((bn, a.shape[1] // split), lambda j, i, s: (i, s)))
    in_specs += [pl.no_block_spec] * (len(arrays) - n_elem)
    if split == 1:
        out_spec = pl.BlockSpec((bm, bn), lambda j, i, s: (j, i))
        out_shape = jax.ShapeDtypeStruct((bp, pw.rows), out_dtype)
    else:
        out_spec = pl.BlockSpec((1, bm, bn), lambda j, i, s: (s, j, i))
        out_shape = jax.ShapeDtypeStruct((split, bp, pw.rows), out_dtype)
    out = pl.pallas_call(
        kernel,
        grid=(bp // bm, pw.rows // bn, split),
        in_specs=in_specs,
        out_specs=out_spec,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages),
        interpret=interpret,
        name=f"quant_tc_{cfg.method}",
    )(xp, *arrays)
    if split > 1:
        out = jnp.sum(out, axis=0)
    return out[:b].astype(x.dtype)
