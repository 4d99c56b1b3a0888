"""Cl(3,1): multivectors as 16 coefficients, the geometric product and its friends.

Conventions (the one source of truth for every other module):

* Basis vectors e1, e2, e3, e4 with metric (+, +, +, -): e1^2 = e2^2 = e3^2 = +1, e4^2 = -1.
* A blade is a bitmask over the basis vectors (bit 0 = e1, ..., bit 3 = e4); the fixed blade
  order is by grade, then lexicographic:

      index  0    1  2  3  4   5   6   7   8   9   10   11   12   13   14    15
      blade  1   e1 e2 e3 e4  e12 e13 e14 e23 e24 e34  e123 e124 e134 e234  e1234

* The Cayley table is generated from the metric at import (``_cayley_from_metric``), never typed:
  blade_a * blade_b = sign * blade_(a xor b), the sign counting the transpositions that bring
  the product into canonical order times the metric of every shared basis vector.
* Cl(3,1) is isomorphic to the real 4x4 matrices. ``GAMMA`` holds four real 4x4 matrices that
  satisfy gamma_i gamma_j + gamma_j gamma_i = 2 eta_ij I (checked at import); a blade maps to the
  ordered product of its gammas. ``to_matrix`` / ``from_matrix`` are the two directions of the
  algebra isomorphism (``to_matrix(a * b) == to_matrix(a) @ to_matrix(b)``).

Everything here is a pure jnp function of arrays whose last axis has 16 coefficients.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np

DIM = 4
NUM_BLADES = 16
METRIC = (1.0, 1.0, 1.0, -1.0)


def _blade_masks() -> tuple[int, ...]:
    masks = []
    for grade in range(DIM + 1):
        for combo in itertools.combinations(range(DIM), grade):
            masks.append(sum(1 << i for i in combo))
    return tuple(masks)


BLADE_MASKS: tuple[int, ...] = _blade_masks()
BLADE_NAMES: tuple[str, ...] = tuple(
    "1" if m == 0 else "e" + "".join(str(i + 1) for i in range(DIM) if m >> i & 1) for m in BLADE_MASKS
)
GRADES = np.array([bin(m).count("1") for m in BLADE_MASKS], dtype=np.int32)
_INDEX_OF_MASK = {m: i for i, m in enumerate(BLADE_MASKS)}


def _reorder_sign(a: int, b: int) -> int:
    """(-1)^(number of transpositions) to bring blade a followed by blade b into canonical order."""
    a >>= 1
    swaps = 0
    while a:
        swaps += bin(a & b).count("1")
        a >>= 1
    return -1 if swaps & 1 else 1


def _blade_product(a: int, b: int, metric: tuple[float, ...]) -> tuple[float, int]:
    sign = float(_reorder_sign(a, b))
    common = a & b
    for i in range(len(metric)):
        if common >> i & 1:
            sign *= metric[i]
    return sign, a ^ b


def _cayley_from_metric(metric: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense table C[i, j, k] and its sparse form (index k = PRODUCT_INDEX[i, j], PRODUCT_SIGN[i, j])."""
    n = len(BLADE_MASKS)
    dense = np.zeros((n, n, n), dtype=np.float64)
    index = np.zeros((n, n), dtype=np.int32)
    sign = np.zeros((n, n), dtype=np.float64)
    for i, a in enumerate(BLADE_MASKS):
        for j, b in enumerate(BLADE_MASKS):
            s, m = _blade_product(a, b, metric)
            k = _INDEX_OF_MASK[m]
            dense[i, j, k] = s
            index[i, j] = k
            sign[i, j] = s
    return dense, index, sign


CAYLEY, PRODUCT_INDEX, PRODUCT_SIGN = _cayley_from_metric(METRIC)
# Output-major form used by the product and the kernels: out[k] = sum_i SIGN_BY_OUT[i, k] a[i] b[PARTNER[i, k]].
PARTNER = np.zeros((NUM_BLADES, NUM_BLADES), dtype=np.int32)
SIGN_BY_OUT = np.zeros((NUM_BLADES, NUM_BLADES), dtype=np.float64)
for _i in range(NUM_BLADES):
    for _j in range(NUM_BLADES):
        PARTNER[_i, PRODUCT_INDEX[_i, _j]] = _j
        SIGN_BY_OUT[_i, PRODUCT_INDEX[_i, _j]] = PRODUCT_SIGN[_i, _j]

REVERSE_SIGN = np.array([(-1.0) ** (g * (g - 1) // 2) for g in GRADES])
INVOLUTION_SIGN = np.array([(-1.0) ** g for g in GRADES])
CONJUGATE_SIGN = REVERSE_SIGN * INVOLUTION_SIGN


# ---------------------------------------------------------------- matrix representation
def _gamma_matrices() -> np.ndarray:
    """Real 4x4 generators of Cl(3,1) as Kronecker products of 2x2 real matrices (checked below)."""
    sx = np.array([[0.0, 1.0], [1.0, 0.0]])
    sz = np.array([[1.0, 0.0], [0.0, -1.0]])
    eps = np.array([[0.0, 1.0], [-1.0, 0.0]])  # eps @ eps = -I
    eye = np.eye(2)
    gammas = np.stack([np.kron(sx, eye), np.kron(sz, eye), np.kron(eps, eps), np.kron(eps, sx)])
    for i in range(DIM):
        for j in range(DIM):
            anti = gammas[i] @ gammas[j] + gammas[j] @ gammas[i]
            want = 2.0 * (METRIC[i] if i == j else 0.0) * np.eye(4)
            if not np.allclose(anti, want):
                raise RuntimeError(f"gamma matrices violate the Clifford relation at ({i}, {j})")
    return gammas


GAMMA = _gamma_matrices()
BLADE_MATRICES = np.stack(
    [
        np.linalg.multi_dot([np.eye(4)] + [GAMMA[i] for i in range(DIM) if m >> i & 1] + [np.eye(4)])
        for m in BLADE_MASKS
    ]
)  # (16, 4, 4)
# from_matrix inverts the coefficient -> flattened-matrix map (the 16 blade matrices are a basis of M_4(R)).
_TO_FLAT = BLADE_MATRICES.reshape(NUM_BLADES, 16)
FROM_FLAT = np.linalg.inv(_TO_FLAT)  # (16 flat entries, 16 coefficients)


def _table(x: np.ndarray, dtype) -> jnp.ndarray:
    return jnp.asarray(x, dtype=dtype)


def _check_last_axis(x: jnp.ndarray, name: str = "x") -> None:
    if x.shape[-1] != NUM_BLADES:
        raise ValueError(f"{name} must have 16 Cl(3,1) coefficients on its last axis, got shape {x.shape}")


# ---------------------------------------------------------------- products
def geometric_product(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """a * b for (..., 16) multivectors (broadcasting), 256 multiply-adds through the sparse table."""
    _check_last_axis(a, "a")
    _check_last_axis(b, "b")
    dtype = jnp.result_type(a, b)
    bp = jnp.take(b, jnp.asarray(PARTNER), axis=-1)  # (..., i, k) = b[..., PARTNER[i, k]]
    return jnp.einsum("...i,...ik,ik->...k", a, bp, _table(SIGN_BY_OUT, dtype))


def geometric_product_einsum(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """a * b through the dense 16x16x16 Cayley table (the plain einsum reference for benchmarks)."""
    _check_last_axis(a, "a")
    _check_last_axis(b, "b")
    dtype = jnp.result_type(a, b)
    return jnp.einsum("...i,...j,ijk->...k", a, b, _table(CAYLEY, dtype))


def geometric_product_blade_major(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """a * b for blade-major (16, ...) arrays: 256 unrolled multiply-adds on whole rows.

    XLA fuses this into one elementwise loop (no table, no gather); it is the jnp reference of
    the ``soa`` Pallas kernel and a strong plain-XLA baseline in benchmarks.
    """
    if a.shape[0] != NUM_BLADES or b.shape[0] != NUM_BLADES:
        raise ValueError(f"blade-major arrays need 16 rows first, got {a.shape} and {b.shape}")
    out = []
    for k in range(NUM_BLADES):
        acc = None
        for i in range(NUM_BLADES):
            term = a[i] * b[int(PARTNER[i, k])]
            if acc is None:
                acc = term if SIGN_BY_OUT[i, k] > 0 else -term
            else:
                acc = acc + term if SIGN_BY_OUT[i, k] > 0 else acc - term
        out.append(acc)
    return jnp.stack(out)


def product_chain(x: jnp.ndarray, axis: int = -2) -> jnp.ndarray:
    """Ordered product x_0 x_1 ... x_{T-1} along ``axis`` (the multivector axis stays last)."""
    _check_last_axis(x)
    x = jnp.moveaxis(x, axis, 0)
    out = x[0]
    for t in range(1, x.shape[0]):
        out = geometric_product(out, x[t])
    return out


# ---------------------------------------------------------------- involutions and grades
def reverse(x: jnp.ndarray) -> jnp.ndarray:
    """Reversion ~x: grade k picks up (-1)^(k(k-1)/2). An anti-automorphism: ~(ab) = ~b ~a."""
    _check_last_axis(x)
    return x * _table(REVERSE_SIGN, x.dtype)


def grade_involution(x: jnp.ndarray) -> jnp.ndarray:
    """Main involution x^: grade k picks up (-1)^k. An automorphism."""
    _check_last_axis(x)
    return x * _table(INVOLUTION_SIGN, x.dtype)


def clifford_conjugate(x: jnp.ndarray) -> jnp.ndarray:
    """Reverse of the grade involution."""
    _check_last_axis(x)
    return x * _table(CONJUGATE_SIGN, x.dtype)


def grade_mask(grades, dtype=jnp.float32) -> jnp.ndarray:
    """(16,) 0/1 mask selecting the blades whose grade is in ``grades`` (an int or an iterable of ints)."""
    grades = (grades,) if isinstance(grades, int) else tuple(grades)
    return jnp.asarray(np.isin(GRADES, grades), dtype=dtype)


def grade_project(x: jnp.ndarray, grades) -> jnp.ndarray:
    """<x>_grades: keep the coefficients of the given grade(s), zero the rest."""
    _check_last_axis(x)
    return x * grade_mask(grades, x.dtype)


def scalar_product(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """<~a b>_0, computed without the full product: sum_i a_i b_i times the square of blade i."""
    _check_last_axis(a, "a")
    _check_last_axis(b, "b")
    dtype = jnp.result_type(a, b)
    blade_square = np.array([PRODUCT_SIGN[i, i] for i in range(NUM_BLADES)])  # e_I e_I = +-1
    weights = REVERSE_SIGN * blade_square
    return jnp.sum(a * b * _table(weights, dtype), axis=-1)


def quadratic_norm(x: jnp.ndarray) -> jnp.ndarray:
    """<x ~x>_0: the (indefinite) Clifford quadratic form; equals <~x x>_0. May be negative in Cl(3,1)."""
    return scalar_product(x, x)


def norm(x: jnp.ndarray) -> jnp.ndarray:
    """Euclidean norm of the 16 coefficients (positive definite; the choice made for this library).

    It is the Frobenius norm of ``to_matrix(x)`` divided by 2 (the blade matrices are signed
    permutation matrices, orthogonal under the Frobenius inner product with squared norm 4).
    """
    _check_last_axis(x)
    return jnp.sqrt(jnp.sum(x * x, axis=-1))


# ---------------------------------------------------------------- matrix maps
def to_matrix(x: jnp.ndarray) -> jnp.ndarray:
    """(..., 16) coefficients -> (..., 4, 4) real matrices (an algebra isomorphism)."""
    _check_last_axis(x)
    return jnp.einsum("...k,kab->...ab", x, _table(BLADE_MATRICES, x.dtype))


def from_matrix(m: jnp.ndarray) -> jnp.ndarray:
    """(..., 4, 4) real matrices -> (..., 16) coefficients (inverse of ``to_matrix``)."""
    if m.shape[-2:] != (4, 4):
        raise ValueError(f"from_matrix needs (..., 4, 4) matrices, got shape {m.shape}")
    flat = m.reshape(m.shape[:-2] + (16,))
    return flat @ _table(FROM_FLAT, m.dtype)


def basis(index: int, dtype=jnp.float32) -> jnp.ndarray:
    """The unit blade with the given index in the fixed order."""
    return jnp.zeros((NUM_BLADES,), dtype).at[index].set(1.0)


def blade_index(name: str) -> int:
    """Index of a blade given its name ('1', 'e1', 'e23', 'e1234'); raises with the valid names."""
    try:
        return BLADE_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown blade {name!r}; valid names: {', '.join(BLADE_NAMES)}") from None


__all__ = [
    "BLADE_MASKS", "BLADE_NAMES", "GRADES", "CAYLEY", "PRODUCT_INDEX", "PRODUCT_SIGN", "PARTNER", "SIGN_BY_OUT",
    "GAMMA", "BLADE_MATRICES", "METRIC", "NUM_BLADES",
    "geometric_product", "geometric_product_einsum", "geometric_product_blade_major", "product_chain", "reverse", "grade_involution",
    "clifford_conjugate", "grade_mask", "grade_project", "scalar_product", "quadratic_norm", "norm",
    "to_matrix", "from_matrix", "basis", "blade_index",
]
