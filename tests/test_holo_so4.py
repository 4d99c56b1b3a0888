"""SO(4) embeddings, binding and unbinding at any context length."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqf_jax.ops import so4

# jitted: one compile per shape, not one per primitive and shape in eager mode (hypothesis draws many lengths)
haar_raw = jax.jit(so4.haar_so4_raw, static_argnums=(1, 2))
context_product = jax.jit(so4.context_product, static_argnames="axis")
so4_exp = jax.jit(so4.so4_exp)
grounded_so4 = jax.jit(so4.grounded_so4)
expm = jax.jit(jax.scipy.linalg.expm)

def _orth_err(m):
    m = np.asarray(m, np.float64)
    return np.abs(np.swapaxes(m, -1, -2) @ m - np.eye(4)).max()


def test_haar_is_so4_and_det_one():
    m = so4.haar_so4(jax.random.key(0), (512,))
    assert m.shape == (512, 4, 4) and m.dtype == jnp.float32
    assert _orth_err(m) < 1e-5
    np.testing.assert_allclose(np.linalg.det(np.asarray(m, np.float64)), 1.0, atol=1e-5)


def test_haar_moments():
    # Haar on SO(4): E[M_ij] = 0 and E[M_ij^2] = 1/4
    m = np.asarray(so4.haar_so4(jax.random.key(1), (20000,)), np.float64)
    assert np.abs(m.mean(0)).max() < 0.02
    np.testing.assert_allclose((m**2).mean(0), 0.25, atol=0.01)


def test_check_so4_rejects_reflections():
    m = np.array(so4.haar_so4(jax.random.key(2), (4,)))
    m[1, :, 0] *= -1
    with pytest.raises(so4.NotSO4Error, match="nearest_so4"):
        so4.check_so4(m)
    so4.check_so4(so4.nearest_so4(jnp.asarray(m)))


def test_so4_exp_matches_expm():
    theta = jax.random.normal(jax.random.key(3), (64, 6)) * 2.0
    want = expm(so4.angles_to_algebra(theta))
    np.testing.assert_allclose(np.asarray(so4_exp(theta)), np.asarray(want), atol=5e-5)
    np.testing.assert_allclose(np.asarray(so4_exp(jnp.zeros((6,)))), np.eye(4), atol=0)


def test_grounded_embeddings_are_rotations_and_respect_similarity():
    base = jax.random.normal(jax.random.key(4), (50, 32))
    table = jnp.concatenate([base, base[:5] + 1e-3 * jax.random.normal(jax.random.key(5), (5, 32))])
    e = grounded_so4(table)
    so4.check_so4(e)
    near = np.linalg.norm(np.asarray(e[:5] - e[50:]), axis=(1, 2)).max()
    far = np.median(np.linalg.norm(np.asarray(e[:25] - e[25:50]), axis=(1, 2)))
    assert near < 0.05 * far
    # deterministic: same table, same rotations
    np.testing.assert_array_equal(np.asarray(grounded_so4(table)), np.asarray(e))


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([1, 2, 3, 7, 64, 1000, 4097]), st.integers(0, 2**31 - 1))
def test_context_product_stays_so4_and_matches_fold(length, seed):
    mats = haar_raw(jax.random.key(seed), (length,))
    prod = context_product(mats, axis=0)
    want = np.eye(4)
    for m in np.asarray(mats, np.float64):
        want = want @ m
    tol = 1e-6 * (10 + np.sqrt(length))
    np.testing.assert_allclose(np.asarray(prod), want, atol=tol * 10)
    assert _orth_err(prod) < tol * 10
    np.testing.assert_allclose(np.linalg.det(np.asarray(prod, np.float64)), 1.0, atol=tol * 10)


@settings(max_examples=5, deadline=None)
@given(st.sampled_from([1, 4, 16, 256, 4096]), st.integers(0, 2**31 - 1))
def test_unbinding_exact_for_single_pair(length, seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    ctx = context_product(haar_raw(k1, (length,)), axis=0)
    target = haar_raw(k2)
    memory = so4.bind(ctx, target)
    np.testing.assert_allclose(np.asarray(so4.unbind(memory, ctx)), np.asarray(target), atol=1e-4)


def test_bind_order_matters():
    a, b = haar_raw(jax.random.key(7), (2,))
    assert float(jnp.abs(so4.bind(a, b) - so4.bind(b, a)).max()) > 1e-2
