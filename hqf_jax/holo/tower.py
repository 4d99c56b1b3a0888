"""Basin keys and routing of contexts into a multi-level tower of 16^L satellites.

A context's 16 Clifford coefficients x (of its SO(4) product, optionally Grace-damped) are
quantised at L resolutions, coarsest first: level d (d = 0 .. L-1) uses
``resolution * level_ratio ** (L - 1 - d)``, so the finest level quantises at ``resolution``
(default phi^-8) and each coarser level at ``level_ratio`` (default phi^2) times the next. The
16 integers of level d hash (seed d) to one hexadecimal digit; the leaf satellite is the
L-digit number, coarse digit most significant, so satellites of a coarse basin are contiguous
and a level-d bucket is ``leaf >> 4 (L - d)``. Contexts in the same fine basin share every
coarser bucket (up to quantisation-boundary effects: the resolutions are not integer
multiples of each other). With L = 0 the tower is a single bucket (no routing).
"""

from __future__ import annotations

import jax.numpy as jnp

from hqf_jax.holo.hashing import hash_rows
from hqf_jax.ops import grace as grace_ops
from hqf_jax.ops.constants import PHI, PHI_INV

BASIN_RESOLUTION = PHI_INV**8
LEVEL_RATIO = PHI**2


def basin_key(mv: jnp.ndarray, resolution: float = BASIN_RESOLUTION, use_grace: bool = True) -> jnp.ndarray:
    """(..., 16) coefficients -> (..., 16) int32 basin coordinates round(x / resolution)."""
    x = grace_ops.grace(mv) if use_grace else mv
    return jnp.round(x / resolution).astype(jnp.int32)


def level_resolutions(levels: int, resolution: float = BASIN_RESOLUTION, level_ratio: float = LEVEL_RATIO):
    return tuple(resolution * level_ratio ** (levels - 1 - d) for d in range(levels))


def route(
    mv: jnp.ndarray,
    levels: int,
    resolution: float = BASIN_RESOLUTION,
    level_ratio: float = LEVEL_RATIO,
    use_grace: bool = True,
) -> jnp.ndarray:
    """(B, 16) coefficients -> (B,) int32 leaf satellite in [0, 16**levels)."""
    if levels > 7:
        raise ValueError(f"tower levels must be <= 7 (16^L leaves in int32), got {levels}")
    leaf = jnp.zeros(mv.shape[:-1], jnp.uint32)
    for d, res in enumerate(level_resolutions(levels, resolution, level_ratio)):
        digit = hash_rows(basin_key(mv, res, use_grace), seed=d) & jnp.uint32(15)
        leaf = (leaf << 4) | digit
    return leaf.astype(jnp.int32)


def level_bucket(leaf: jnp.ndarray, levels: int, depth: int) -> jnp.ndarray:
    """Bucket of the leaf at ``depth`` digits (0 = root, levels = the leaf itself)."""
    return leaf >> (4 * (levels - depth))


def level_offsets(levels: int) -> tuple[int, ...]:
    """Start of each depth 0..levels in the concatenated tower array (root first)."""
    offs, total = [], 0
    for d in range(levels + 1):
        offs.append(total)
        total += 16**d
    return tuple(offs)


def tower_size(levels: int) -> int:
    return sum(16**d for d in range(levels + 1))


def aggregate_levels(leaves: jnp.ndarray, levels: int) -> jnp.ndarray:
    """Concatenate every depth 0..levels of the tower, each bucket the sum of its 16 children."""
    parts = [leaves]
    cur = leaves
    for _ in range(levels):
        cur = cur.reshape((cur.shape[0] // 16, 16) + cur.shape[1:]).sum(axis=1)
        parts.append(cur)
    return jnp.concatenate(parts[::-1], axis=0)
