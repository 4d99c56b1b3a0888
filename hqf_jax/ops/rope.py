"""Rotary position embeddings with the Hugging Face `rope_scaling` variants.

Pure functions. `rope_frequencies` turns a normalised rope dict (see
`hqf_jax.nn.hf_config.normalize_rope`) into the inverse frequencies and the
attention scaling that multiplies cos/sin; it runs at trace time on static
Python/NumPy values (the sequence length is static under jit), mirroring
`transformers.modeling_rope_utils` in float32:

  default   theta^(-2i/d)
  linear    default / factor
  dynamic   NTK: theta' = theta * (factor*L/Lmax - (factor-1))^(d/(d-2)) once L > Lmax
  llama3    low frequencies / factor, high kept, smooth ramp between
  longrope  (alias su) 1/(ext * theta^(2i/d)), ext = long_factor if L > Lorig else short_factor,
            attention scaling sqrt(1 + ln(Lmax/Lorig)/ln(Lorig)) unless given
  yarn      ramp between interpolated and extrapolated frequencies, mscale attention factor

`rope_cos_sin` and `apply_rope` are the jnp half: cos/sin tables for given
positions and the rotate-half application (partial rotary supported: only the
first `2 * len(inv_freq)` channels rotate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "longrope", "yarn")


class RopeConfigError(ValueError):
    """A rope_scaling entry this module cannot interpret."""


def rotary_dim(rope: Mapping, head_dim: int) -> int:
    """Number of rotated channels per head (partial_rotary_factor * head_dim)."""
    return int(head_dim * float(rope.get("partial_rotary_factor", 1.0)))


def _base_exponents(dim: int) -> np.ndarray:
    return np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)


def _default_inv_freq(base: float, dim: int) -> np.ndarray:
    return (np.float32(1.0) / (np.float32(base) ** _base_exponents(dim))).astype(np.float32)


def rope_frequencies(
    rope: Mapping, head_dim: int, seq_len: int, max_position_embeddings: int
) -> tuple[np.ndarray, float]:
    """Inverse frequencies (float32, shape (rotary_dim/2,)) and attention scaling for a sequence of `seq_len`.

    `seq_len` is 1 + the largest position that will be embedded (as in transformers); it only matters for the
    length-dependent types (dynamic, longrope).
    """
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ROPE_TYPES:
        raise RopeConfigError(f"rope_type {rope_type!r} is not supported; valid: {', '.join(ROPE_TYPES)}")
    base = float(rope["rope_theta"])
    dim = rotary_dim(rope, head_dim)
    if rope_type == "default":
        return _default_inv_freq(base, dim), 1.0
    if rope_type == "linear":
        return (_default_inv_freq(base, dim) / np.float32(rope["factor"])).astype(np.float32), 1.0
    if rope_type == "dynamic":
        factor = float(rope["factor"])
        length = max(int(seq_len), int(max_position_embeddings))
        new_base = base * ((factor * length / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
        return _default_inv_freq(new_base, dim), 1.0
    if rope_type == "llama3":
        return _llama3(rope, base, dim), 1.0
    if rope_type == "longrope":
        return _longrope(rope, base, dim, seq_len, max_position_embeddings)
    return _yarn(rope, base, dim, max_position_embeddings)


def _llama3(rope: Mapping, base: float, dim: int) -> np.ndarray:
    inv_freq = _default_inv_freq(base, dim)
    factor = np.float32(rope["factor"])
    low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old_len = float(rope["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
    smooth = ((old_len / wavelen - low) / (high - low)).astype(np.float32)
    smoothed = ((1 - smooth) * scaled / factor + smooth * scaled).astype(np.float32)
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _longrope(
    rope: Mapping, base: float, dim: int, seq_len: int, max_position_embeddings: int
) -> tuple[np.ndarray, float]:
    original = int(rope["original_max_position_embeddings"])
    factor = rope.get("factor")
    if factor is None:
        factor = max_position_embeddings / original
    attention = rope.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    ext = rope["long_factor"] if seq_len > original else rope["short_factor"]
    ext = np.asarray(ext, dtype=np.float32)
    if ext.shape != (dim // 2,):
        raise RopeConfigError(f"longrope factors must have length rotary_dim/2 = {dim // 2}, got {ext.shape[0]}")
    inv_freq = np.float32(1.0) / (ext * (np.float32(base) ** _base_exponents(dim)))
    return inv_freq.astype(np.float32), float(attention)


def _yarn(rope: Mapping, base: float, dim: int, max_position_embeddings: int) -> tuple[np.ndarray, float]:
    original = int(rope["original_max_position_embeddings"])
    factor = rope.get("factor")
    if factor is None:
        factor = max_position_embeddings / original
    factor = float(factor)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = rope.get("attention_factor")
    if attention is None:
        m, m_all = rope.get("mscale"), rope.get("mscale_all_dim")
        attention = float(mscale(factor, m) / mscale(factor, m_all)) if (m and m_all) else mscale(factor)
    beta_fast = rope.get("beta_fast") or 32
    beta_slow = rope.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    pos_freqs = np.float32(base) ** _base_exponents(dim)
    extrap = 1 - ramp
    inv_freq = (np.float32(1.0) / (np.float32(factor) * pos_freqs)) * (1 - extrap) + (1.0 / pos_freqs) * extrap
    return inv_freq.astype(np.float32), float(attention)


def rope_cos_sin(
    positions: jnp.ndarray, inv_freq: np.ndarray | jnp.ndarray, attention_scaling: float = 1.0
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos, sin tables of shape positions.shape + (2*len(inv_freq),), float32, scaled by attention_scaling."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb) * attention_scaling, jnp.sin(emb) * attention_scaling


def rotate_half(x: jnp.ndarray) -> jnp.ndarray:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate the first cos.shape[-1] channels of x (..., T, D) by (cos, sin) of shape (T, R); the rest pass through.

    cos/sin broadcast against x's leading axes (use shape (T, R) for x of shape (B, H, T, D)).
    Computed in float32 and returned in x's dtype.
    """
    r = cos.shape[-1]
    xf = x.astype(jnp.float32)
    rot, rest = xf[..., :r], xf[..., r:]
    out = jnp.concatenate([rot * cos + rotate_half(rot) * sin, rest], axis=-1)
    return out.astype(x.dtype)
