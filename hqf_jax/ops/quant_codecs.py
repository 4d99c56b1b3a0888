"""Weight codecs as pure functions on a 2-D matrix m of shape (R, C): rows are output channels, groups of G
consecutive columns share their scales. Each encoder returns (codes, bits): dicts name -> uint32 array and
name -> stored bits per element of that array, so accounting and packing never need to know the codec. Each
decoder is the exact inverse map from codes to float32 values.

Codecs
  phi    geometric grid (+-s * r**-k, r = phi or e/sqrt5) + `depth` deviation stages, each with its own group
         scale; a deviation stage is a uniform signed code (`dev_kind="uniform"`) or again a geometric grid
         (`dev_kind="grid"`); optional per-row sort (codes are then in sorted order and `perm` maps back).
  int    round-to-nearest integers with group scales, symmetric or with a zero point.
  nf4    QLoRA normal-float levels, fp32 absmax per group, optionally double-quantized absmax.
  float  the bf16 / fp32 reference (codes are the raw bit patterns).

Scales are stored rounded up (see store_scale) so that |w| / scale <= 1 and every bound below holds.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from hqf_jax.ops import quant_grids as qg

# ---- matrix view of an arbitrary leaf ------------------------------------------------------------------------


def to_matrix(w: jnp.ndarray) -> jnp.ndarray:
    """(R, C) view: rows = last axis (the output features of a Flax kernel), columns = all other axes."""
    if w.ndim == 1:
        return w.reshape(1, -1)
    return w.reshape(-1, w.shape[-1]).T


def from_matrix(m: jnp.ndarray, shape: tuple[int, ...]) -> jnp.ndarray:
    """Inverse of to_matrix."""
    if len(shape) == 1:
        return m.reshape(shape)
    return m.T.reshape(shape)


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 1:
        return 1, shape[0]
    return shape[-1], int(np.prod(shape[:-1]))


def _grouped(m: jnp.ndarray, group_size: int | None) -> jnp.ndarray:
    r, c = m.shape
    g = group_size or c
    return m.reshape(r, c // g, g)


def _absmax(g: jnp.ndarray) -> jnp.ndarray:
    return jnp.max(jnp.abs(g), axis=-1)


def perm_bits(cols: int) -> int:
    """Bits stored per permutation entry for a row of `cols` weights: ceil(log2 cols)."""
    return max(1, math.ceil(math.log2(cols)))


# ---- phi / geometric grid with deviation stages --------------------------------------------------------------


def uniform_dev_encode(e: jnp.ndarray, t: jnp.ndarray, bits: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Signed uniform code of e with scale t (broadcast): codes in [0, 2Q], Q = 2**(bits-1) - 1. (codes, decoded)"""
    q = 2 ** (bits - 1) - 1
    k = jnp.clip(jnp.round(e / t * q), -q, q)
    codes = (k + q).astype(jnp.uint32)
    return codes, uniform_dev_decode(codes, t, bits)


def uniform_dev_decode(codes: jnp.ndarray, t: jnp.ndarray, bits: int) -> jnp.ndarray:
    q = 2 ** (bits - 1) - 1
    return (codes.astype(jnp.float32) - q) * (t / q)


def phi_encode(
    m: jnp.ndarray,
    *,
    ratio: float,
    index_bits: int,
    dev_bits: int,
    depth: int,
    dev_kind: str,
    group_size: int | None,
    sort: bool,
    scale_dtype: str,
) -> tuple[dict[str, jnp.ndarray], dict[str, int]]:
    m = jnp.asarray(m, jnp.float32)
    r, c = m.shape
    sbits = qg.SCALE_BITS[scale_dtype]
    codes: dict[str, jnp.ndarray] = {}
    bits: dict[str, int] = {}
    if sort:
        perm = jnp.argsort(m, axis=1)
        m = jnp.take_along_axis(m, perm, axis=1)
        codes["perm"], bits["perm"] = perm.astype(jnp.uint32), perm_bits(c)
    g = _grouped(m, group_size)
    s = qg.store_scale(_absmax(g), scale_dtype)
    sv = qg.load_scale(s, scale_dtype)[..., None]
    idx = qg.geometric_encode(g / sv, ratio, index_bits)
    resid = g - qg.geometric_decode(idx, ratio, index_bits) * sv
    codes["scale"], bits["scale"] = s, sbits
    codes["idx"], bits["idx"] = idx.reshape(r, c), index_bits
    for j in range(1, depth + 1):
        t = qg.store_scale(_absmax(resid), scale_dtype)
        tv = qg.load_scale(t, scale_dtype)[..., None]
        if dev_kind == "uniform":
            dc, dec = uniform_dev_encode(resid, tv, dev_bits)
        else:
            dc = qg.geometric_encode(resid / tv, ratio, dev_bits)
            dec = qg.geometric_decode(dc, ratio, dev_bits) * tv
        resid = resid - dec
        codes[f"dev{j}_scale"], bits[f"dev{j}_scale"] = t, sbits
        codes[f"dev{j}"], bits[f"dev{j}"] = dc.reshape(r, c), dev_bits
    return codes, bits


def phi_decode_stages(
    codes: dict[str, jnp.ndarray],
    *,
    ratio: float,
    index_bits: int,
    dev_bits: int,
    depth: int,
    dev_kind: str,
    group_size: int | None,
    scale_dtype: str,
) -> list[jnp.ndarray]:
    """The contribution of each stage (grid, dev1, ..., devD) as (R, C) float32 arrays, in SORTED order when the
    codes were sorted. Their running sum is the reconstruction after each stage."""
    idx = codes["idx"]
    r, c = idx.shape
    sv = qg.load_scale(codes["scale"], scale_dtype)[..., None]
    out = [(qg.geometric_decode(_grouped(idx, group_size), ratio, index_bits) * sv).reshape(r, c)]
    for j in range(1, depth + 1):
        tv = qg.load_scale(codes[f"dev{j}_scale"], scale_dtype)[..., None]
        dc = _grouped(codes[f"dev{j}"], group_size)
        if dev_kind == "uniform":
            dec = uniform_dev_decode(dc, tv, dev_bits)
        else:
            dec = qg.geometric_decode(dc, ratio, dev_bits) * tv
        out.append(dec.reshape(r, c))
    return out


def unsort(m_sorted: jnp.ndarray, perm: jnp.ndarray) -> jnp.ndarray:
    """Put row-sorted values back: out[i, perm[i, j]] = m_sorted[i, j]."""
    inv = jnp.argsort(perm.astype(jnp.int32), axis=1)
    return jnp.take_along_axis(m_sorted, inv, axis=1)


def phi_decode(codes: dict[str, jnp.ndarray], **kw) -> jnp.ndarray:
    stages = phi_decode_stages(codes, **kw)
    total = stages[0]
    for s in stages[1:]:
        total = total + s
    if "perm" in codes:
        total = unsort(total, codes["perm"])
    return total


def phi_error_bound(scale: jnp.ndarray, last_scale: jnp.ndarray, *, ratio, index_bits, dev_bits, depth,
                    dev_kind) -> jnp.ndarray:
    """Per-group bound on |w - decode(encode(w))|, given the stored grid scale and the last stage's scale."""
    if depth == 0:
        return scale * qg.geometric_max_abs_error(ratio, index_bits)
    if dev_kind == "uniform":
        return last_scale / (2.0 * (2 ** (dev_bits - 1) - 1))
    return last_scale * qg.geometric_max_abs_error(ratio, dev_bits)


# ---- round-to-nearest integers -------------------------------------------------------------------------------


def int_encode(
    m: jnp.ndarray, *, bits: int, group_size: int | None, symmetric: bool, scale_dtype: str
) -> tuple[dict[str, jnp.ndarray], dict[str, int]]:
    m = jnp.asarray(m, jnp.float32)
    r, c = m.shape
    g = _grouped(m, group_size)
    sbits = qg.SCALE_BITS[scale_dtype]
    if symmetric:
        q = 2 ** (bits - 1) - 1
        s = qg.store_scale(_absmax(g) / q, scale_dtype)
        sv = qg.load_scale(s, scale_dtype)[..., None]
        k = jnp.clip(jnp.round(g / sv), -q, q) + q
        return {"scale": s, "q": k.astype(jnp.uint32).reshape(r, c)}, {"scale": sbits, "q": bits}
    top = 2**bits - 1
    lo = jnp.minimum(jnp.min(g, axis=-1), 0.0)
    hi = jnp.maximum(jnp.max(g, axis=-1), 0.0)
    s = qg.store_scale((hi - lo) / top, scale_dtype)
    sv = qg.load_scale(s, scale_dtype)
    z = jnp.clip(jnp.round(-lo / sv), 0, top)
    k = jnp.clip(jnp.round(g / sv[..., None]) + z[..., None], 0, top)
    return (
        {"scale": s, "zero": z.astype(jnp.uint32), "q": k.astype(jnp.uint32).reshape(r, c)},
        {"scale": sbits, "zero": bits, "q": bits},
    )


def int_decode(codes, *, bits: int, group_size: int | None, symmetric: bool, scale_dtype: str) -> jnp.ndarray:
    q = codes["q"]
    r, c = q.shape
    sv = qg.load_scale(codes["scale"], scale_dtype)[..., None]
    k = _grouped(q, group_size).astype(jnp.float32)
    if symmetric:
        return ((k - (2 ** (bits - 1) - 1)) * sv).reshape(r, c)
    z = codes["zero"].astype(jnp.float32)[..., None]
    return ((k - z) * sv).reshape(r, c)


# ---- NF4 (QLoRA) ---------------------------------------------------------------------------------------------


def _nf4_scales_dq(absmax: jnp.ndarray, block: int):
    """Double quantization of the fp32 absmax (bitsandbytes compress_statistics): subtract the mean, then
    blockwise 8-bit dynamic-map codes with one fp32 absmax per `block` scales. Returns codes and used scales."""
    flat = absmax.reshape(-1)
    n = flat.shape[0]
    offset = jnp.mean(flat)
    cen = flat - offset
    nb = -(-n // block)
    padded = jnp.pad(cen, (0, nb * block - n)).reshape(nb, block)
    a2 = jnp.max(jnp.abs(padded), axis=1)
    a2 = jnp.where(a2 > 0, a2, 1.0)
    dmap = qg.dynamic_map()
    q = qg.nearest_table_index(padded / a2[:, None], dmap)
    used = jnp.maximum(jnp.asarray(dmap)[q.astype(jnp.int32)] * a2[:, None] + offset, 0.0)
    codes = {
        "absmax_q": q.reshape(-1)[:n],
        "absmax2": qg.jax_bitcast_f32_to_u32(a2),
        "offset": qg.jax_bitcast_f32_to_u32(offset.reshape(1)),
    }
    return codes, used.reshape(-1)[:n].reshape(absmax.shape)


def nf4_scales(codes: dict[str, jnp.ndarray], shape: tuple[int, int], *, double_quant: bool, dq_block: int):
    """The float32 per-group scales the NF4 codes were encoded with."""
    if not double_quant:
        return qg.jax_bitcast_u32_to_f32(codes["absmax"])
    q = codes["absmax_q"].astype(jnp.int32)
    n = q.shape[0]
    nb = -(-n // dq_block)
    a2 = qg.jax_bitcast_u32_to_f32(codes["absmax2"])
    off = qg.jax_bitcast_u32_to_f32(codes["offset"])[0]
    vals = jnp.asarray(qg.dynamic_map())[jnp.pad(q, (0, nb * dq_block - n)).reshape(nb, dq_block)]
    return jnp.maximum(vals * a2[:, None] + off, 0.0).reshape(-1)[:n].reshape(shape)


def nf4_encode(
    m: jnp.ndarray, *, group_size: int | None, double_quant: bool, dq_block: int
) -> tuple[dict[str, jnp.ndarray], dict[str, int]]:
    m = jnp.asarray(m, jnp.float32)
    r, c = m.shape
    g = _grouped(m, group_size)
    absmax = _absmax(g)
    if double_quant:
        codes, used = _nf4_scales_dq(absmax, dq_block)
        bits = {"absmax_q": 8, "absmax2": 32, "offset": 32}
    else:
        codes, used = {"absmax": qg.jax_bitcast_f32_to_u32(absmax)}, absmax
        bits = {"absmax": 32}
    x = jnp.where(used[..., None] > 0, g / jnp.where(used > 0, used, 1.0)[..., None], 0.0)
    codes["q"] = qg.nearest_table_index(jnp.clip(x, -1.0, 1.0), qg.NF4_LEVELS).reshape(r, c)
    bits["q"] = 4
    return codes, bits


def nf4_decode(codes, *, group_size: int | None, double_quant: bool, dq_block: int) -> jnp.ndarray:
    q = codes["q"]
    r, c = q.shape
    ng = c // (group_size or c)
    s = nf4_scales(codes, (r, ng), double_quant=double_quant, dq_block=dq_block)
    vals = jnp.asarray(qg.NF4_LEVELS)[_grouped(q, group_size).astype(jnp.int32)]
    return (vals * s[..., None]).reshape(r, c)


# ---- float reference -----------------------------------------------------------------------------------------


def float_encode(m: jnp.ndarray, *, dtype: str) -> tuple[dict[str, jnp.ndarray], dict[str, int]]:
    m = jnp.asarray(m, jnp.float32)
    if dtype == "fp32":
        return {"w": qg.jax_bitcast_f32_to_u32(m)}, {"w": 32}
    return {"w": qg.jax_bitcast_bf16_to_u32(m.astype(jnp.bfloat16))}, {"w": 16}


def float_decode(codes, *, dtype: str) -> jnp.ndarray:
    w = codes["w"]
    if dtype == "fp32":
        return qg.jax_bitcast_u32_to_f32(w)
    return qg.jax_bitcast_u32_to_f32(w.astype(jnp.uint32) << 16)

