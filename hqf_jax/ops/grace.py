"""The Grace operator and the scores built on it (Cl(3,1) multivectors, 16 coefficients last).

Definitions (the research notes leave parts open; the choices made here are parameters):

* Grace scales grade k by ``phi_inv ** GRACE_EXPONENTS[k]`` with exponents (0, 1, 2, 3, 1): the
  scalar is kept, vectors x phi^-1, bivectors x phi^-2, trivectors x phi^-3 and the pseudoscalar
  x phi^-1 (the notes treat the pseudoscalar like a second "scalar-like" witness, so it is damped
  only once). ``grace_inverse`` undoes it exactly.
* Stability: the share of coefficient energy in the witness grades (default 0 and 4, the ones
  Grace preserves best): ``sum_{k in witness} |<x>_k|^2 / |x|^2`` in [0, 1]. Iterating Grace
  drives every non-zero multivector with a witness part to stability 1.
* Vorticity of an ordered pair: the bivector part of the commutator, ``<(ab - ba) / 2>_2``; for a
  sequence, the sum over consecutive pairs (the antisymmetric, order-dependent content).
* Vorticity-weighted score of a query q against candidates c:
  ``cos(G(q), G(c)) + weight * cos(<q>_2, <c>_2)`` where G is Grace and cos the Euclidean cosine
  of coefficients; ``weight = 0`` gives the plain cosine, the default is phi^-1.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from hqf_jax.ops import clifford
from hqf_jax.ops.constants import PHI_INV

GRACE_EXPONENTS = (0, 1, 2, 3, 1)
WITNESS_GRADES = (0, 4)
_EPS = 1e-12


def grace_weights(phi_inv: float = PHI_INV, exponents=GRACE_EXPONENTS, dtype=jnp.float32) -> jnp.ndarray:
    """(16,) per-blade Grace factors phi_inv ** exponents[grade(blade)]."""
    if len(exponents) != 5:
        raise ValueError(f"exponents must give one power per grade 0..4 (5 numbers), got {exponents}")
    per_grade = np.asarray([phi_inv**e for e in exponents], dtype=np.float64)
    return jnp.asarray(per_grade[clifford.GRADES], dtype=dtype)


def grace(x: jnp.ndarray, phi_inv: float = PHI_INV, exponents=GRACE_EXPONENTS) -> jnp.ndarray:
    """Damp each grade of x (..., 16) by its power of phi^-1."""
    return x * grace_weights(phi_inv, exponents, x.dtype)


def grace_inverse(x: jnp.ndarray, phi_inv: float = PHI_INV, exponents=GRACE_EXPONENTS) -> jnp.ndarray:
    """Exact inverse of ``grace`` (amplifies each grade by its power of phi)."""
    return x / grace_weights(phi_inv, exponents, x.dtype)


def stability(x: jnp.ndarray, witness=WITNESS_GRADES) -> jnp.ndarray:
    """Share of coefficient energy in the witness grades, in [0, 1] (0 for the zero multivector)."""
    energy = jnp.sum(x * x, axis=-1)
    kept = jnp.sum(clifford.grade_project(x, witness) ** 2, axis=-1)
    return kept / jnp.maximum(energy, _EPS)


def vorticity(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Bivector part of the commutator (ab - ba) / 2."""
    comm = 0.5 * (clifford.geometric_product(a, b) - clifford.geometric_product(b, a))
    return clifford.grade_project(comm, 2)


def sequence_vorticity(x: jnp.ndarray, axis: int = -2) -> jnp.ndarray:
    """Sum of the vorticities of consecutive elements along ``axis`` (zero for a single element)."""
    x = jnp.moveaxis(x, axis, 0)
    if x.shape[0] < 2:
        return jnp.zeros_like(x[0])
    return jnp.sum(vorticity(x[:-1], x[1:]), axis=0)


def _unit(x: jnp.ndarray) -> jnp.ndarray:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def vorticity_weighted_score(
    query: jnp.ndarray, candidates: jnp.ndarray, weight: float = PHI_INV, phi_inv: float = PHI_INV
) -> jnp.ndarray:
    """Scores (..., C) of queries (..., 16) against candidates (C, 16); a matmul in coefficient space."""
    q = _unit(grace(query, phi_inv))
    c = _unit(grace(candidates, phi_inv))
    score = q @ c.T
    if weight:
        qb = _unit(clifford.grade_project(query, 2))
        cb = _unit(clifford.grade_project(candidates, 2))
        score = score + weight * (qb @ cb.T)
    return score
