"""Quantization grids: geometric (phi, e/sqrt5) levels, the QLoRA NF4 table, the bitsandbytes dynamic map,
nearest-level search and scale storage. Pure functions on arrays.

Geometric grid of ratio r with K = 2**(bits-1) magnitudes: levels are +-r**(-k) for k = 0..K-1 (times a group
scale). An index code packs the sign in its top bit: code = sign << (bits-1) | k.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax.ops.constants import PHI

E_OVER_SQRT5 = math.e / math.sqrt(5.0)  # the "Euler-Fibonacci" ratio of the research notes, 1.2157...
GRID_RATIOS = {"phi": PHI, "e_sqrt5": E_OVER_SQRT5}

# NF4 levels exactly as published with QLoRA (Dettmers et al. 2023) and hard-coded in bitsandbytes.
NF4_LEVELS = np.array(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
        -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
        0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
        0.7229568362236023, 1.0,
    ],
    dtype=np.float32,
)


def resolve_ratio(ratio: str | float) -> float:
    """Grid ratio from a name in GRID_RATIOS or a number > 1."""
    if isinstance(ratio, str):
        return GRID_RATIOS[ratio]
    return float(ratio)


def geometric_magnitudes(ratio: float, n: int) -> np.ndarray:
    """The n magnitudes r**0, r**-1, ..., r**-(n-1) (float32, computed in float64)."""
    return (float(ratio) ** -np.arange(n, dtype=np.float64)).astype(np.float32)


def geometric_levels(ratio: float, bits: int) -> np.ndarray:
    """All 2**bits signed levels of the geometric grid, indexed by code (sign in the top bit)."""
    mags = geometric_magnitudes(ratio, 2 ** (bits - 1))
    return np.concatenate([mags, -mags]).astype(np.float32)


def geometric_max_abs_error(ratio: float, bits: int) -> float:
    """Worst rounding error of the geometric grid on |a| <= 1, in units of the scale."""
    k = 2 ** (bits - 1)
    return max((1.0 - 1.0 / ratio) / 2.0, float(ratio) ** -(k - 1))


def nearest_geometric_index(a: jnp.ndarray, ratio: float, n: int) -> jnp.ndarray:
    """Index k in [0, n) of the magnitude r**-k nearest (in value) to a >= 0. int32, same shape as a."""
    a = jnp.asarray(a, jnp.float32)
    mags = jnp.asarray(geometric_magnitudes(ratio, n))
    kc = -jnp.log(jnp.maximum(a, 1e-38)) / math.log(ratio)
    k0 = jnp.clip(jnp.floor(kc).astype(jnp.int32), 0, n - 1)
    k1 = jnp.clip(k0 + 1, 0, n - 1)
    e0 = jnp.abs(a - mags[k0])
    e1 = jnp.abs(a - mags[k1])
    return jnp.where(e1 < e0, k1, k0).astype(jnp.int32)


def geometric_encode(x: jnp.ndarray, ratio: float, bits: int) -> jnp.ndarray:
    """Code (uint32) of the nearest signed geometric level to x (|x| <= 1 expected; larger clips to +-1)."""
    n = 2 ** (bits - 1)
    k = nearest_geometric_index(jnp.abs(x), ratio, n)
    sign = (x < 0).astype(jnp.int32)
    return ((sign << (bits - 1)) | k).astype(jnp.uint32)


def geometric_decode(codes: jnp.ndarray, ratio: float, bits: int) -> jnp.ndarray:
    """Signed level value (float32) of each code: the table lookup the references use."""
    return jnp.asarray(geometric_levels(ratio, bits))[codes.astype(jnp.int32)]


def nearest_table_index(x: jnp.ndarray, table: np.ndarray) -> jnp.ndarray:
    """Index (uint32) of the nearest entry of a sorted table (ties go to the lower entry)."""
    mids = (table[1:].astype(np.float64) + table[:-1].astype(np.float64)) / 2.0
    return jnp.searchsorted(jnp.asarray(mids, jnp.float32), jnp.asarray(x, jnp.float32), side="right").astype(
        jnp.uint32
    )


def table_max_abs_error(table: np.ndarray) -> float:
    """Half the largest gap of a sorted table spanning [-1, 1]: worst rounding error in units of the scale."""
    return float(np.max(np.diff(table.astype(np.float64)))) / 2.0


def nf4_from_normal_quantiles(offset: float = 0.9677083) -> np.ndarray:
    """Rebuild NF4 from its definition (QLoRA appendix / bitsandbytes create_normal_map): asymmetric normal
    quantiles with an exact zero, normalised to [-1, 1]. Used by a test to confirm the published table."""
    from scipy.stats import norm

    pos = norm.ppf(np.linspace(offset, 0.5, 9)[:-1]).tolist()
    neg = (-norm.ppf(np.linspace(offset, 0.5, 8)[:-1])).tolist()
    v = np.array(sorted(pos + [0.0] + neg), dtype=np.float64)
    return (v / np.max(np.abs(v))).astype(np.float32)


def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> np.ndarray:
    """The bitsandbytes 8-bit "dynamic" map used by QLoRA double quantization (256 sorted float32 values)."""
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                    else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        bounds = np.linspace(0.1, 1, items, dtype=np.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:
        bounds = np.linspace(0.1, 1, additional_items + 1, dtype=np.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (2 ** total_bits - len(data))
    return np.array(sorted(data), dtype=np.float32)


# ---- scales: stored as raw bit patterns (bf16 -> 16 bits, fp32 -> 32 bits) -----------------------------------

SCALE_BITS = {"bf16": 16, "fp32": 32}


def store_scale(s: jnp.ndarray, scale_dtype: str) -> jnp.ndarray:
    """Bit pattern (uint32) of the stored scale, rounded UP so that |w| / stored_scale <= 1 still holds.
    A zero scale (all-zero group) is stored as 1 so that decoding is exact and no division by zero happens."""
    s = jnp.asarray(s, jnp.float32)
    s = jnp.where(s > 0, s, 1.0)
    if scale_dtype == "fp32":
        return jax_bitcast_f32_to_u32(s)
    if scale_dtype != "bf16":
        raise ValueError(f"scale_dtype {scale_dtype!r}: use one of {sorted(SCALE_BITS)}")
    b = s.astype(jnp.bfloat16)
    b = jnp.where(b.astype(jnp.float32) < s, jnp.nextafter(b, jnp.bfloat16(jnp.inf)), b)
    return jax_bitcast_bf16_to_u32(b)


def load_scale(codes: jnp.ndarray, scale_dtype: str) -> jnp.ndarray:
    """Float32 value of stored scale bit patterns (the exact inverse of store_scale's bit layout)."""
    codes = jnp.asarray(codes).astype(jnp.uint32)
    if scale_dtype == "fp32":
        return jax_bitcast_u32_to_f32(codes)
    return jax_bitcast_u32_to_f32(codes << 16)


def jax_bitcast_f32_to_u32(x: jnp.ndarray) -> jnp.ndarray:
    return jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)


def jax_bitcast_u32_to_f32(x: jnp.ndarray) -> jnp.ndarray:
    return jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.uint32), jnp.float32)


def jax_bitcast_bf16_to_u32(x: jnp.ndarray) -> jnp.ndarray:
    return jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.bfloat16), jnp.uint16).astype(jnp.uint32)
