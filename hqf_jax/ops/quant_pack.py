"""Bit packing of integer code fields into uint32 words, with no wasted bits inside a word.

A field of `bits`-bit codes is split into power-of-two-wide parts (its binary digits, widest first:
5 = 4 + 1, 6 = 4 + 2, 12 = 8 + 4, 13 = 8 + 4 + 1). A part of width w holds bits [o, o + w) of every code and
is stored 32 // w codes per uint32 word, code t of a word at bit t * w (so an 8-bit part is byte order on a
little-endian machine). Codes are taken in row-major order of the field; only the last word of each part can
hold padding. Unpacking a part is one shift and one mask per code, which is what the Pallas kernels do.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def split_widths(bits: int) -> tuple[tuple[int, int], ...]:
    """((width, bit_offset), ...) of the power-of-two parts of a `bits`-bit field, widest part first."""
    if not 1 <= bits <= 32:
        raise ValueError(f"field width {bits} bits: must be in 1..32")
    parts = []
    offset = 0
    for w in (32, 16, 8, 4, 2, 1):
        if bits - offset >= w:
            parts.append((w, offset))
            offset += w
    return tuple(parts)


def part_words(numel: int, width: int) -> int:
    """Number of uint32 words a part of `width` bits per code takes for `numel` codes."""
    per = 32 // width
    return -(-numel // per)


def packed_bits(numel: int, bits: int) -> int:
    """Exact number of stored bits of a packed field (padding of the last word of each part included)."""
    return sum(32 * part_words(numel, w) for w, _ in split_widths(bits))


@functools.partial(jax.jit, static_argnums=1)
def pack_field(codes: jnp.ndarray, bits: int) -> list[jnp.ndarray]:
    """Pack codes (any integer dtype, values < 2**bits) into one flat uint32 word array per part."""
    flat = jnp.ravel(codes).astype(jnp.uint32)
    out = []
    for w, o in split_widths(bits):
        per = 32 // w
        mask = jnp.uint32((1 << w) - 1) if w < 32 else jnp.uint32(0xFFFFFFFF)
        part = (flat >> jnp.uint32(o)) & mask if o < 32 else flat
        pad = (-part.shape[0]) % per
        part = jnp.pad(part, (0, pad)).reshape(-1, per)
        shifts = (jnp.arange(per, dtype=jnp.uint32) * jnp.uint32(w))[None, :]
        # parts occupy disjoint bits, so the sum is an OR
        out.append(jnp.sum(part << shifts, axis=1, dtype=jnp.uint32))
    return out


def unpack_part(words: jnp.ndarray, width: int, numel: int) -> jnp.ndarray:
    """Codes of one part (uint32, flat, length numel) from its words."""
    per = 32 // width
    mask = jnp.uint32((1 << width) - 1) if width < 32 else jnp.uint32(0xFFFFFFFF)
    shifts = (jnp.arange(per, dtype=jnp.uint32) * jnp.uint32(width))[None, :]
    vals = (jnp.ravel(words).astype(jnp.uint32)[:, None] >> shifts) & mask
    return vals.reshape(-1)[:numel]


@functools.partial(jax.jit, static_argnums=(1, 2))
def unpack_field(parts: list[jnp.ndarray], bits: int, shape: tuple[int, ...]) -> jnp.ndarray:
    """Inverse of pack_field: uint32 codes of the given shape."""
    numel = int(np.prod(shape))
    codes = jnp.zeros((numel,), jnp.uint32)
    for (w, o), words in zip(split_widths(bits), parts, strict=True):
        codes = codes | (unpack_part(words, w, numel) << jnp.uint32(o))
    return codes.reshape(shape)
