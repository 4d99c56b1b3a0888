"""How packed fields become values inside a kernel: the field readers, the float conversions, and one decoder
per codec (phi-grid, int, NF4) that every kernel form (tiled matmul, GEMV, gather) uses. Traced Python, called
inside Pallas kernel bodies.

A decoder splits a codec into what is per group and what is per weight:
    weight = (values[0] - offset) * mults[0] + values[1] * mults[1] + ...
  * scales(pw, group_refs, tables, flat) -> (mults, offset): one float32 multiplier per term at the flat group
    indices `flat` (any shape), and an offset in code units subtracted from the first term (int zero points;
    None when the codec has none);
  * values(cfg, code, tables, to_float) -> one value tensor per multiplier, from `code(name)` (a reader of the
    uint32 codes of a per-weight field, in whatever tile shape the form uses); `to_float(codes, zero)` is the
    form's exact conversion of small integer codes (an int->float convert, or the exponent trick of u2f).
The tiled forms expand the multipliers over their (block_n, block_k) tile (decode_tile); the GEMV form applies
them once per group after summing values * x over the group (pallas_kernels/quant/gemv.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from hqf_jax.ops import quant_grids as qg
from hqf_jax.ops import quant_pack as qp
from pallas_kernels.quant.layout import KernelLayoutError, PackedWeight

MAGIC = 0x4B000000  # float32 bit pattern of 2**23: (MAGIC | c) as float32 is 2**23 + c for c < 2**23


# ---- field readers -------------------------------------------------------------------------------------------


def _mask(w: int) -> jnp.ndarray:
    return jnp.uint32(0xFFFFFFFF if w == 32 else (1 << w) - 1)


def read_elem(refs, bits: int, k0, bk: int) -> jnp.ndarray:
    """(BN, bk) uint32 codes of a per-weight field, columns [k0, k0 + bk) of this block's rows (tiled forms)."""
    out = None
    for (w, o), ref in zip(qp.split_widths(bits), refs, strict=True):
        epw = 32 // w
        nw = bk // epw
        start = pl.multiple_of(k0 // epw, nw)
        words = ref[:, pl.ds(start, nw)]  # (BN, nw)
        bn = words.shape[0]
        shifts = lax.broadcasted_iota(jnp.uint32, (1, 1, epw), 2) * jnp.uint32(w)
        vals = lax.shift_right_logical(words[:, :, None], shifts) & _mask(w)
        vals = vals.reshape(bn, bk)
        if o:
            vals = lax.shift_left(vals, jnp.uint32(o))
        out = vals if out is None else out | vals
    return out


def read_group(refs, bits: int, flat_index: jnp.ndarray) -> jnp.ndarray:
    """uint32 codes of a per-group (flat) field at the given flat element indices (any shape)."""
    out = None
    for (w, o), ref in zip(qp.split_widths(bits), refs, strict=True):
        epw = 32 // w
        words = ref[flat_index // epw]
        sh = ((flat_index % epw) * w).astype(jnp.uint32)
        vals = lax.shift_right_logical(words, sh) & _mask(w)
        if o:
            vals = lax.shift_left(vals, jnp.uint32(o))
        out = vals if out is None else out | vals
    return out


# ---- float conversions ---------------------------------------------------------------------------------------


def i2f(codes: jax.Array, zero: float = 0.0) -> jax.Array:
    """float32 of (codes - zero) with an int->float conversion (the tiled forms)."""
    f = codes.astype(jnp.float32)
    return f - zero if zero else f


def u2f(codes: jax.Array, zero: float = 0.0) -> jax.Array:
    """Exact float32 of (codes - zero) for codes < 2**23, without an int->float conversion instruction."""
    f = lax.bitcast_convert_type(codes | jnp.uint32(MAGIC), jnp.float32)
    return f - jnp.float32(2.0**23 + zero)


def scale_value(codes: jnp.ndarray, scale_dtype: str) -> jnp.ndarray:
    """float32 value of stored scale bit patterns (bf16: the pattern is the top half of an f32)."""
    if scale_dtype == "fp32":
        return lax.bitcast_convert_type(codes, jnp.float32)
    return lax.bitcast_convert_type(lax.shift_left(codes, jnp.uint32(16)), jnp.float32)


def level(codes, nbits: int, ratio: float, table_ref, to_float=i2f):
    """Signed geometric level +-ratio**-k of grid codes: a gather from a 2**bits-entry table when one is given,
    else computed with exp2."""
    if table_ref is not None:
        return table_ref[codes.astype(jnp.int32)]
    half = 1 << (nbits - 1)
    mag = jnp.exp2(to_float(codes & jnp.uint32(half - 1)) * jnp.float32(-math.log2(ratio)))
    return jnp.where(codes >= jnp.uint32(half), -mag, mag)


# ---- one decoder per codec -----------------------------------------------------------------------------------


class PhiDecoder:
    """phi-grid: signed geometric index level times the group scale, plus one term per deviation stage (uniform
    codes centred on q = 2**(dev_bits-1) - 1 with scale t / q, or grid levels with scale t)."""

    @staticmethod
    def tables(cfg, levels: str) -> dict:
        if levels != "table":
            return {}
        r = qg.resolve_ratio(cfg.ratio)
        t = {"grid": jnp.asarray(qg.geometric_levels(r, cfg.index_bits))}
        if cfg.depth and cfg.dev_kind == "grid":
            t["devgrid"] = jnp.asarray(qg.geometric_levels(r, cfg.dev_bits))
        return t

    @staticmethod
    def scales(pw: PackedWeight, group: dict, tables: dict, flat):
        cfg, bits = pw.cfg, pw.bits_dict
        q = 2 ** (cfg.dev_bits - 1) - 1
        mults = [scale_value(read_group(group["scale"], bits["scale"], flat), cfg.scale_dtype)]
        for j in range(1, cfg.depth + 1):
            t = scale_value(read_group(group[f"dev{j}_scale"], bits[f"dev{j}_scale"], flat), cfg.scale_dtype)
            mults.append(t * (1.0 / q) if cfg.dev_kind == "uniform" else t)
        return mults, None

    @staticmethod
    def values(cfg, code, tables: dict, to_float) -> list:
        ratio = qg.resolve_ratio(cfg.ratio)
        q = 2 ** (cfg.dev_bits - 1) - 1
        vs = [level(code("idx"), cfg.index_bits, ratio, tables.get("grid"), to_float)]
        for j in range(1, cfg.depth + 1):
            dc = code(f"dev{j}")
            vs.append(to_float(dc, q) if cfg.dev_kind == "uniform"
                      else level(dc, cfg.dev_bits, ratio, tables.get("devgrid"), to_float))
        return vs


class IntDecoder:
    """int: (code - zero) * scale; symmetric codes are centred on 2**(bits-1) - 1, asymmetric ones on a stored
    per-group zero point (the offset)."""

    @staticmethod
    def tables(cfg, levels: str) -> dict:
        return {}

    @staticmethod
    def scales(pw: PackedWeight, group: dict, tables: dict, flat):
        cfg, bits = pw.cfg, pw.bits_dict
        s = scale_value(read_group(group["scale"], bits["scale"], flat), cfg.scale_dtype)
        if cfg.symmetric:
            return [s], None
        return [s], read_group(group["zero"], bits["zero"], flat).astype(jnp.float32)

    @staticmethod
    def values(cfg, code, tables: dict, to_float) -> list:
        return [to_float(code("q"), 2 ** (cfg.bits - 1) - 1 if cfg.symmetric else 0.0)]


class NF4Decoder:
    """NF4: a 16-entry level table times the group absmax (fp32, or double-quantized: an 8-bit code through the
    dynamic map times its second-level fp32 scale plus the offset)."""

    @staticmethod
    def tables(cfg, levels: str) -> dict:
        t = {"nf4": jnp.asarray(qg.NF4_LEVELS)}
        if cfg.double_quant:
            t["dmap"] = jnp.asarray(qg.dynamic_map())
        return t

    @staticmethod
    def scales(pw: PackedWeight, group: dict, tables: dict, flat):
        cfg, bits = pw.cfg, pw.bits_dict
        if not cfg.double_quant:
            return [lax.bitcast_convert_type(read_group(group["absmax"], bits["absmax"], flat), jnp.float32)], None
        aq = read_group(group["absmax_q"], bits["absmax_q"], flat).astype(jnp.int32)
        a2 = lax.bitcast_convert_type(read_group(group["absmax2"], 32, flat // cfg.dq_block), jnp.float32)
        off = lax.bitcast_convert_type(read_group(group["offset"], 32, flat * 0), jnp.float32)
        return [jnp.maximum(tables["dmap"][aq] * a2 + off, 0.0)], None

    @staticmethod
    def values(cfg, code, tables: dict, to_float) -> list:
        return [tables["nf4"][code("q").astype(jnp.int32)]]


DECODERS = {"phi": PhiDecoder, "int": IntDecoder, "nf4": NF4Decoder}  # keyed by config.method


def decoder(cfg):
    try:
        return DECODERS[cfg.method]
    except KeyError:
        raise KernelLayoutError(f"no kernel decode for {cfg.name}: methods with a kernel are {sorted(DECODERS)}; "
                                "use the bf16 XLA matmul") from None


def tables_for(cfg, levels: str = "exp2") -> dict[str, jnp.ndarray]:
    """Small lookup tables a kernel reads with gather loads (NF4 levels, the double-quant dynamic map, and with
    levels="table" the signed geometric levels instead of computing them with exp2)."""
    return decoder(cfg).tables(cfg, levels)


# ---- the tiled forms' decode ---------------------------------------------------------------------------------


def expand_groups(v: jnp.ndarray, bk: int) -> jnp.ndarray:
    """(BN, n) per-group values -> broadcastable to (BN, bk) (n == 1 stays (BN, 1))."""
    bn, n = v.shape
    if n == 1:
        return v
    return jnp.broadcast_to(v[:, :, None], (bn, n, bk // n)).reshape(bn, bk)


def decode_tile(pw: PackedWeight, elem_refs: dict, group_refs: dict, table_refs: dict,
                row0, k0, kglob, bn: int, bk: int) -> jnp.ndarray:
    """Dequantized (BN, bk) float32 tile of rows [row0, row0 + bn), columns [kglob, kglob + bk).

    `k0` is the column offset inside this program's element-field block, `kglob` the absolute column (group
    index), `row0` the absolute first row (flat index of group fields)."""
    cfg = pw.cfg
    bits = pw.bits_dict
    g = cfg.group_size or pw.cols
    ngt = max(1, bk // g)
    rows = row0 + lax.broadcasted_iota(jnp.int32, (bn, 1), 0)
    gcol = kglob // g + lax.broadcasted_iota(jnp.int32, (1, ngt), 1)
    flat = rows * (pw.cols // g) + gcol  # (bn, ngt)
    dec = decoder(cfg)
    mults, offset = dec.scales(pw, group_refs, table_refs, flat)
    vals = dec.values(cfg, lambda name: read_elem(elem_refs[name], bits[name], k0, bk), table_refs, i2f)
    val = None
    for t, (v, m) in enumerate(zip(vals, mults, strict=True)):
        if t == 0 and offset is not None:
            v = v - expand_groups(offset, bk)
        part = v * expand_groups(m, bk)
        val = part if val is None else val + part
    return val
