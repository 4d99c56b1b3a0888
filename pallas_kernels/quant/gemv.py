"""Small-batch (GEMV) form of the fused dequantize-matmul: `quant_matmul(..., blocks=BlockConfig(mode="vec"))`,
called by pallas_kernels.quant.dispatch.quant_matmul after its checks.

At batch 1-8 the product is bound by reading the packed weight, so this form avoids every step that costs more
than the bytes: no tensor core (no padding of the batch to 16 rows), no reshape of a decoded tile (a reshape in
Triton can go through shared memory), no int->float conversion instruction, and group scales applied once per
group instead of once per weight.

Tile layout. Let E be the largest number of codes per uint32 word over the weight's fields (int4 / NF4: 8;
phi5u8 = 4+1-bit index and 8-bit deviation: 32) and split E into mixed-radix digits, one per field width
(32 = 4 x 2 x 4 for code widths 1, 4, 8). A column inside a block of E columns is then a digit tuple, and a
field of 32/p codes per word has its word given by the leading digits and its shift by the trailing ones. Each
packed field is viewed in HBM (a free reshape) as (R, C/U, U/E, *leading digits), U = min(group size, block_k),
and loaded as one contiguous tile; shifting it by an iota over the trailing digits broadcasts it to the full
(block_n, block_k/U, U/E, *digits) tile, which has the same shape for every field and for x (viewed the same
way). Codes become floats exactly by the exponent trick: bitcast(code | 0x4B000000) - (2^23 + zero).

Per step a program adds, per batch row b and output row r,  sum_groups s[r, g] * sum_{cols in g} v[r, c] x[b, c]
(plus one such term per deviation stage with its own scale), so scales cost one multiply per group.

acc="slot" (the default) never builds the full tile: it walks the digit tuples (column slots) one at a time,
each a constant shift of one loaded word per field part against a contiguous load of a slot-major x, and
accumulates in the words' own (block_n, nu, U/E) shape. acc="step"/"tile" build the full tile by broadcasting
(1.5-2.5x slower on an H200; kept for the kernel probe, docs/quant.md has the figures).

The codec (what a code means, which scales multiply it) comes from pallas_kernels/quant/decode.py, the same
decoder the tiled forms use; this module only says how the GEMV form reads codes and applies the scales.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from hqf_jax.ops import quant_pack as qp
from pallas_kernels.quant.decode import decoder, tables_for, u2f
from pallas_kernels.quant.layout import KernelLayoutError, PackedWeight, flatten, unflatten

MAX_VEC_BATCH = 8
ACCS = ("slot", "step", "tile")  # see BlockConfig.acc


@dataclasses.dataclass(frozen=True)
class VecLayout:
    e: int  # codes per word of the narrowest field (the largest count), columns per digit block
    digits: tuple[int, ...]  # mixed radix of a column inside a block of e columns, most significant first
    u: int  # columns sharing one group scale inside a tile: min(group size, block_k)

    def lead(self, w: int) -> int:
        """Number of leading digits that select the word of a field part of width w (the rest select the shift)."""
        per = 32 // w
        prod = 1
        for m in range(len(self.digits) + 1):
            if prod * per == self.e:
                return m
            if m < len(self.digits):
                prod *= self.digits[m]
        raise AssertionError((self, w))


def vec_layout(pw: PackedWeight, block_k: int) -> VecLayout:
    per = sorted({32 // w for name in pw.elem for w, _ in qp.split_widths(pw.bits_dict[name])}, reverse=True)
    e = per[0]
    digits = tuple(a // b for a, b in zip(per, per[1:])) + (per[-1],)
    g = pw.cfg.group_size or pw.cols
    u = min(g, block_k)
    if u % e:
        fix = "raise block_k" if block_k < g else "the group is too small for this form"
        raise KernelLayoutError(
            f"mode='vec' needs min(group_size, block_k) = {u} to be a multiple of {e} (codes per word of the "
            f"narrowest field of {pw.cfg.name}): {fix}; or use mode='fma'")
    return VecLayout(e=e, digits=digits, u=u)


def supports_vec(pw: PackedWeight, block_k: int) -> bool:
    try:
        vec_layout(pw, block_k)
        return True
    except KernelLayoutError:
        return False


def view_elem(a: jax.Array, lay: VecLayout, w: int, rows: int, cols: int) -> jax.Array:
    """(R, C*w/32) packed words -> (R, C/U, U/E, *leading digits): a row-major reshape, no data movement."""
    return a.reshape(rows, cols // lay.u, lay.u // lay.e, *lay.digits[: lay.lead(w)])


def view_x(x: jax.Array, lay: VecLayout, slot_major: bool = False) -> jax.Array:
    """x (B, C) as (B, C/U, U/E, *digits), or slot-major (B, *digits, C/U, U/E) for acc="slot" so that the x of one
    column slot is a contiguous load (XLA fuses the transpose into whatever produced x)."""
    b, c = x.shape
    v = x.reshape(b, c // lay.u, lay.u // lay.e, *lay.digits)
    if slot_major:
        nd = len(lay.digits)
        v = v.transpose(0, *range(3, 3 + nd), 1, 2)
    return v


def _field(words, shift, w: int, at: int):
    """The w-bit field starting at bit `shift` (int or uint32 tensor) of words, placed at bit `at`. A constant
    shift folds the two shifts into one (then one shift and one mask per field)."""
    mask = jnp.uint32(((1 << w) - 1) << at) if w + at < 32 else jnp.uint32((0xFFFFFFFF << at) & 0xFFFFFFFF)
    if isinstance(shift, int):
        r = shift - at
        vals = words if r == 0 else (lax.shift_right_logical(words, jnp.uint32(r)) if r > 0
                                     else lax.shift_left(words, jnp.uint32(-r)))
        return vals & mask
    vals = lax.shift_right_logical(words, shift)
    if w < 32:
        vals = vals & jnp.uint32((1 << w) - 1)
    return lax.shift_left(vals, jnp.uint32(at)) if at else vals


def read_codes(refs, bits: int, lay: VecLayout, u0, nu: int, bn: int) -> jax.Array:
    """(bn, nu, U/E, *digits) uint32 codes of a per-weight field for this step's nu scale units."""
    nd = len(lay.digits)
    full = (bn, nu, lay.u // lay.e, *lay.digits)
    out = None
    for (w, o), ref in zip(qp.split_widths(bits), refs, strict=True):
        m = lay.lead(w)
        words = ref[(slice(None), pl.ds(u0, nu)) + (slice(None),) * (1 + m)]
        words = lax.broadcast_in_dim(words, full, tuple(range(3 + m)))
        shift = None
        stride = 1
        for d in reversed(range(m, nd)):  # slot index over the trailing digits, row-major
            term = lax.broadcasted_iota(jnp.uint32, full, 3 + d) * jnp.uint32(stride)
            shift = term if shift is None else shift + term
            stride *= lay.digits[d]
        out_p = _field(words, 0 if shift is None else shift * jnp.uint32(w), w, o)
        out = out_p if out is None else out | out_p
    return out


def inner_sum(v: jax.Array) -> jax.Array:
    """(bn, nu, ...) -> (bn, nu): sum the trailing axes one at a time."""
    while v.ndim > 2:
        v = jnp.sum(v, axis=-1)
    return v


def vec_format(pw: PackedWeight, group: dict, tables: dict, flat):
    """The codec's per-group multipliers [(bn, nu)], its zero term ((bn, nu) or None) and values(code), which maps
    a reader of per-weight codes (field name -> uint32 codes of any shape) to one value tensor per multiplier:
    weight = sum_t values[t] * multipliers[t] - zero (the zero term multiplies the sum of x over the group)."""
    dec = decoder(pw.cfg)
    mults, offset = dec.scales(pw, group, tables, flat)
    zero = None if offset is None else offset * mults[0]  # y -= s * z * sum(x over the group)
    return mults, zero, lambda code: dec.values(pw.cfg, code, tables, u2f)


def group_index(pw: PackedWeight, lay: VecLayout, row0, kglob, nu: int, bn: int):
    """(bn, nu) flat (row * n_groups + group) index of the scale of each scale unit of this step's tile."""
    g = pw.cfg.group_size or pw.cols
    rows = row0 + lax.broadcasted_iota(jnp.int32, (bn, 1), 0)
    gcol = (kglob + lax.broadcasted_iota(jnp.int32, (1, nu), 1) * lay.u) // g
    return rows * (pw.cols // g) + gcol


def vec_terms(pw: PackedWeight, lay: VecLayout, elem: dict, group: dict, tables: dict, row0, u0, kglob, nu: int,
              bn: int):
    """Decoded tile of this step as ([(values (bn, nu, U/E, *digits), per-group multiplier (bn, nu)), ...], zero)."""
    mults, zero, values = vec_format(pw, group, tables, group_index(pw, lay, row0, kglob, nu, bn))
    vs = values(lambda name: read_codes(elem[name], pw.bits_dict[name], lay, u0, nu, bn))
    return list(zip(vs, mults, strict=True)), zero


def slot_step(pw: PackedWeight, lay: VecLayout, elem: dict, group: dict, tables: dict, x_ref, bb: int,
              row0, u0, kglob, nu: int, bn: int) -> list:
    """acc="slot": this step's (bn, nu, U/E) contribution per batch row, one column slot at a time.

    Every tensor has the packed words' own (bn, nu, U/E) shape: for each digit tuple (a column inside each block
    of E columns) the code is a constant shift of one word per field part, and x of that column is a contiguous
    load from the slot-major x, so nothing is broadcast or reshaped; sum_slots value * x accumulates with one FMA
    per weight and the group multipliers apply once per step."""
    bits = pw.bits_dict
    mults, zero, values = vec_format(pw, group, tables, group_index(pw, lay, row0, kglob, nu, bn))
    words: dict = {}

    def word(name, p, ref, lead):
        key = (name, p, lead)
        if key not in words:
            words[key] = ref[(slice(None), pl.ds(u0, nu), slice(None)) + lead]
        return words[key]

    sums = [[None] * len(mults) for _ in range(bb)]
    xsum = [None] * bb
    for slot in itertools.product(*(range(d) for d in lay.digits)):
        def code(name, slot=slot):
            out = None
            for p, ((w, o), ref) in enumerate(zip(qp.split_widths(bits[name]), elem[name], strict=True)):
                m = lay.lead(w)
                pos = 0
                for d, v in zip(lay.digits[m:], slot[m:]):
                    pos = pos * d + v
                vals = _field(word(name, p, ref, slot[:m]), pos * w, w, o)
                out = vals if out is None else out | vals
            return out

        vs = values(code)
        for r in range(bb):
            x = x_ref[(r, *slot, pl.ds(u0, nu), slice(None))].astype(jnp.float32)[None]  # (1, nu, U/E)
            for t, v in enumerate(vs):
                sums[r][t] = v * x if sums[r][t] is None else sums[r][t] + v * x
            if zero is not None:
                xsum[r] = x if xsum[r] is None else xsum[r] + x
    out = []
    for r in range(bb):
        acc = None
        for t, m in enumerate(mults):
            part = sums[r][t] * _expand(m, 3)
            acc = part if acc is None else acc + part
        if zero is not None:
            acc = acc - _expand(zero, 3) * xsum[r]
        out.append(acc)
    return out


def _expand(m: jax.Array, ndim: int) -> jax.Array:
    return lax.broadcast_in_dim(m, (*m.shape, *([1] * (ndim - 2))), (0, 1))


def step_sums(terms, zero, xs: list) -> list:
    """acc="step": reduce the tile every step; (bn,) per batch row. Scales cost one multiply per group."""
    out = []
    for x in xs:
        acc = None
        for v, mult in terms:
            part = inner_sum(v * x[None]) * mult
            acc = part if acc is None else acc + part
        if zero is not None:
            acc = acc - zero * inner_sum(x[None])
        out.append(jnp.sum(acc, axis=1))
    return out


def tile_products(terms, zero, xs: list) -> list:
    """acc="tile": the full (bn, nu, U/E, *digits) products per batch row, reduced once after the K loop."""
    nd = terms[0][0].ndim
    w = None
    for v, mult in terms:
        part = v * _expand(mult, nd)
        w = part if w is None else w + part
    if zero is not None:
        w = w - _expand(zero, nd)
    return [w * x[None] for x in xs]


def vec_matmul(x: jax.Array, pw: PackedWeight, blocks, interpret: bool):
    """The pallas_call of mode="vec"; blocks already checked (BlockConfig). x (B, C), at most MAX_VEC_BATCH rows
    per program."""
    elem_names, group_names, table_names, flat_arrays = flatten(pw, tables_for(pw.cfg, blocks.levels))
    b, k = x.shape
    bn, bk, split = blocks.block_n, blocks.block_k, blocks.split_k
    lay = vec_layout(pw, bk)
    bb = blocks.block_b or min(b, MAX_VEC_BATCH)
    if bb > MAX_VEC_BATCH:
        raise KernelLayoutError(f"mode='vec' takes at most {MAX_VEC_BATCH} batch rows per program, got block_b={bb}: "
                                f"use block_b <= {MAX_VEC_BATCH}, or mode='dot' for large batches")
    bp = -(-b // bb) * bb
    xp = x.astype(jnp.bfloat16)
    if bp != b:
        xp = jnp.zeros((bp, k), jnp.bfloat16).at[:b].set(xp)
    slot_major = blocks.acc == "slot"
    xv = view_x(xp, lay, slot_major)
    kspan = k // split
    nu = bk // lay.u
    nk = kspan // bk
    n_elem = sum(len(pw.elem[n]) for n in elem_names)
    widths = [w for n in elem_names for w, _ in qp.split_widths(pw.bits_dict[n])]
    arrays = [view_elem(a, lay, w, pw.rows, pw.cols) for a, w in zip(flat_arrays[:n_elem], widths, strict=True)]
    arrays += list(flat_arrays[n_elem:])
    vdims = (lay.u // lay.e, *lay.digits)
    out_dtype = x.dtype if split == 1 else jnp.float32

    def kernel(x_ref, *refs):
        o_ref = refs[-1]
        elem, group, tabs = unflatten(refs[:-1], pw, elem_names, group_names, table_names)
        i = pl.program_id(0)
        s = pl.program_id(1)
        rest = (slice(None),) * len(vdims)

        def body(t, acc):
            u0 = pl.multiple_of(t * nu, nu)
            kglob = s * kspan + t * bk
            if blocks.acc == "slot":
                step = slot_step(pw, lay, elem, group, tabs, x_ref, bb, i * bn, u0, kglob, nu, bn)
            else:
                xs = [x_ref[(r, pl.ds(u0, nu)) + rest].astype(jnp.float32) for r in range(bb)]
                terms, zero = vec_terms(pw, lay, elem, group, tabs, i * bn, u0, kglob, nu, bn)
                step = (tile_products if blocks.acc == "tile" else step_sums)(terms, zero, xs)
            return tuple(a + d for a, d in zip(acc, step, strict=True))

        acc_shape = {"step": (bn,), "tile": (bn, nu, *vdims), "slot": (bn, nu, vdims[0])}[blocks.acc]
        acc = lax.fori_loop(0, nk, body, tuple(jnp.zeros(acc_shape, jnp.float32) for _ in range(bb)))
        if blocks.acc != "step":
            acc = tuple(jnp.sum(inner_sum(a), axis=1) for a in acc)
        for r in range(bb):
            if split == 1:
                o_ref[r, :] = acc[r].astype(o_ref.dtype)
            else:
                o_ref[0, r, :] = acc[r]

    zeros = (0,) * len(vdims)
    if slot_major:
        nd = len(lay.digits)
        in_specs = [pl.BlockSpec((bb, *lay.digits, kspan // lay.u, vdims[0]),
                                 lambda i, s, j: (j, *zeros[:nd], s, 0))]
    else:
        in_specs = [pl.BlockSpec((bb, kspan // lay.u, *vdims), lambda i, s, j: (j, s, *zeros))]
    for a in arrays[:n_elem]:
        tail = a.shape[2:]
        in_specs.append(pl.BlockSpec((bn, kspan // lay.u, *tail), lambda i, s, j, n=len(tail): (i, s) + (0,) * n))
    in_specs += [pl.no_block_spec] * (len(arrays) - n_elem)
    if split == 1:
        out_spec = pl.BlockSpec((bb, bn), lambda i, s, j: (j, i))
        out_shape = jax.ShapeDtypeStruct((bp, pw.rows), out_dtype)
    else:
        out_spec = pl.BlockSpec((1, bb, bn), lambda i, s, j: (s, j, i))
        out_shape = jax.ShapeDtypeStruct((split, bp, pw.rows), out_dtype)
    out = pl.pallas_call(
        kernel,
        grid=(pw.rows // bn, split, bp // bb),
        in_specs=in_specs,
        out_specs=out_spec,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages),
        interpret=interpret,
        name=f"quant_gemv_{pw.cfg.method}",
    )(xv, *arrays)
    if split > 1:
        out = jnp.sum(out, axis=0)
    if bp != b:
        out = out[:b]
    return out.astype(x.dtype)
