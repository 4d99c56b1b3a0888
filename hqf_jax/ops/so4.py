"""SO(4) token embeddings, binding and unbinding (4x4 real matrices, last two axes).

* ``haar_so4``: Haar-random rotations: QR of a Gaussian matrix with the sign fix
  Q <- Q diag(sign(diag R)) (Haar on O(4)), then the first column is negated where det = -1 (a
  measure-preserving bijection of the det -1 coset onto SO(4)). ``haar_so4`` checks det = +1 and
  orthogonality on the host and raises ``NotSO4Error``; ``haar_so4_raw`` is the traceable core.
* ``so4_exp``: exponential of sum_p theta_p G_p over the six generators G_(ij) = E_ij - E_ji
  (pair order (01, 02, 03, 12, 13, 23)). Closed form through so(4) = su(2) + su(2): the self-dual
  and anti-self-dual parts A+ and A- commute and square to -s^2 I, so
  exp(A) = (cos s+ I + sin s+ / s+ A+)(cos s- I + sin s- / s- A-), with s = |A|_F / 2.
* ``grounded_so4``: embeddings from any (V, D) vector table: centre, project on the top six
  principal axes (signs fixed so that each axis' largest loading is positive), scale each axis
  to standard deviation ``angle_scale`` and exponentiate. Similar vectors give nearby rotations.
* ``bind`` = ordered product, ``unbind`` = product with the transpose (the inverse on SO(4)),
  ``context_product`` = ordered product of a whole context (pairwise tree, log depth).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax.errors import HqfError

PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
_DUAL = np.array([5, 4, 3, 2, 1, 0])  # index of the complementary pair
_DUAL_SIGN = np.array([1.0, -1.0, 1.0, 1.0, -1.0, 1.0])  # Levi-Civita sign of (pair, dual pair)


class NotSO4Error(HqfError, ValueError):
    """Raised when matrices that must be rotations are not (orthogonality or determinant)."""


def so4_generators(dtype=jnp.float32) -> jnp.ndarray:
    """(6, 4, 4) basis E_ij - E_ji of so(4), in PAIRS order."""
    g = np.zeros((6, 4, 4))
    for p, (i, j) in enumerate(PAIRS):
        g[p, i, j], g[p, j, i] = 1.0, -1.0
    return jnp.asarray(g, dtype=dtype)


def angles_to_algebra(theta: jnp.ndarray) -> jnp.ndarray:
    """(..., 6) angles -> (..., 4, 4) antisymmetric matrices."""
    return jnp.einsum("...p,pab->...ab", theta, so4_generators(theta.dtype))


def _exp_isoclinic(theta: jnp.ndarray) -> jnp.ndarray:
    a = angles_to_algebra(theta)
    s = jnp.sqrt(jnp.sum(theta * theta, axis=-1) / 2.0)[..., None, None]  # |A|_F / 2
    eye = jnp.eye(4, dtype=theta.dtype)
    return jnp.cos(s) * eye + jnp.sinc(s / jnp.pi) * a


def so4_exp(theta: jnp.ndarray) -> jnp.ndarray:
    """exp(sum_p theta_p G_p) for (..., 6) angles, exact closed form (no series, no Pade)."""
    if theta.shape[-1] != 6:
        raise ValueError(f"so4_exp needs 6 angles on the last axis, got shape {theta.shape}")
    dual = theta[..., _DUAL] * jnp.asarray(_DUAL_SIGN, theta.dtype)
    plus, minus = 0.5 * (theta + dual), 0.5 * (theta - dual)
    return _exp_isoclinic(plus) @ _exp_isoclinic(minus)


def haar_so4_raw(key: jax.Array, shape: tuple[int, ...] = (), dtype=jnp.float32) -> jnp.ndarray:
    """Haar-random SO(4) matrices of shape shape + (4, 4); traceable, unchecked."""
    z = jax.random.normal(key, tuple(shape) + (4, 4), dtype=jnp.float32)
    q, r = jnp.linalg.qr(z)
    d = jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))
    d = jnp.where(d == 0, 1.0, d)
    q = q * d[..., None, :]
    det = jnp.linalg.det(q)
    flip = jnp.where(det < 0, -1.0, 1.0)
    q = q.at[..., :, 0].multiply(flip[..., None])
    return q.astype(dtype)


def check_so4(m, atol: float = 1e-4, what: str = "matrices") -> None:
    """Host-side check that m (..., 4, 4) are rotations; raises NotSO4Error naming the worst error."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape[-2:] != (4, 4):
        raise NotSO4Error(f"{what} must have shape (..., 4, 4), got {m.shape}")
    orth = np.abs(np.swapaxes(m, -1, -2) @ m - np.eye(4)).max(initial=0.0)
    det = np.abs(np.linalg.det(m) - 1.0).max(initial=0.0)
    if orth > atol or det > atol:
        raise NotSO4Error(
            f"{what} are not in SO(4): max |M^T M - I| = {orth:.2e}, max |det - 1| = {det:.2e} (atol {atol}); "
            "re-orthonormalise with nearest_so4"
        )


def haar_so4(key: jax.Array, shape: tuple[int, ...] = (), dtype=jnp.float32) -> jnp.ndarray:
    """Haar-random SO(4) matrices, with det = +1 and orthogonality asserted on the host."""
    m = jax.jit(haar_so4_raw, static_argnums=(1, 2))(key, tuple(shape), dtype)
    check_so4(m, what="Haar samples")
    return m


def nearest_so4(m: jnp.ndarray) -> jnp.ndarray:
    """Closest rotation in Frobenius norm (polar factor via SVD, det fixed to +1)."""
    u, _, vt = jnp.linalg.svd(m)
    det = jnp.linalg.det(u @ vt)
    u = u.at[..., :, -1].multiply(jnp.where(det < 0, -1.0, 1.0)[..., None])
    return u @ vt


def pca_angles(table: jnp.ndarray, angle_scale: float = 1.0) -> jnp.ndarray:
    """(V, D) vectors -> (V, 6) angles: top-6 principal coordinates scaled to std ``angle_scale``."""
    if table.ndim != 2:
        raise ValueError(f"grounded embeddings need a (V, D) vector table, got shape {table.shape}")
    x = table.astype(jnp.float32)
    x = x - jnp.mean(x, axis=0, keepdims=True)
    _, _, vt = jnp.linalg.svd(x, full_matrices=False)
    k = min(6, vt.shape[0])
    axes = vt[:k]
    biggest = jnp.take_along_axis(axes, jnp.argmax(jnp.abs(axes), axis=1)[:, None], axis=1)
    axes = axes * jnp.where(biggest < 0, -1.0, 1.0)
    coords = x @ axes.T
    coords = coords / jnp.maximum(jnp.std(coords, axis=0, keepdims=True), 1e-12) * angle_scale
    if k < 6:
        coords = jnp.pad(coords, ((0, 0), (0, 6 - k)))
    return coords


def grounded_so4(table: jnp.ndarray, angle_scale: float = 1.0) -> jnp.ndarray:
    """(V, D) vector table -> (V, 4, 4) rotations exp(PCA angles); nearby vectors, nearby rotations."""
    return so4_exp(pca_angles(table, angle_scale))


def bind(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Ordered product a @ b."""
    return a @ b


def unbind(memory: jnp.ndarray, key: jnp.ndarray) -> jnp.ndarray:
    """key^T @ memory: exact inverse of ``bind(key, .)`` when key is a rotation."""
    return jnp.swapaxes(key, -1, -2) @ memory


def context_product(mats: jnp.ndarray, axis: int = -3) -> jnp.ndarray:
    """Ordered product M_0 M_1 ... M_{T-1} along ``axis`` by a pairwise tree (log2 T depth)."""
    x = jnp.moveaxis(mats, axis, 0)
    while x.shape[0] > 1:
        if x.shape[0] % 2:
            eye = jnp.broadcast_to(jnp.eye(4, dtype=x.dtype), (1,) + x.shape[1:])
            x = jnp.concatenate([x, eye], axis=0)
        x = x[0::2] @ x[1::2]
    return x[0]
