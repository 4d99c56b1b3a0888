"""Cl(3,1) algebra laws, the generated Cayley table against the matrix representation, and Grace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hqf_jax.ops import clifford as cl
from hqf_jax.ops import grace as gr
from hqf_jax.ops.constants import PHI_INV

jax.config.update("jax_enable_x64", False)

MV = hnp.arrays(np.float64, (16,), elements=st.floats(-3.0, 3.0, allow_nan=False, width=64))
FAST = settings(max_examples=40, deadline=None)


def gp(a, b):
    return np.asarray(cl.geometric_product(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)), np.float64)


def test_blade_order_and_grades():
    assert cl.BLADE_NAMES[:5] == ("1", "e1", "e2", "e3", "e4")
    assert cl.BLADE_NAMES[-1] == "e1234"
    assert list(cl.GRADES) == [0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 4]


def test_basis_vectors_square_to_metric():
    for i, m in enumerate(cl.METRIC):
        e = cl.basis(1 + i)
        sq = cl.geometric_product(e, e)
        np.testing.assert_allclose(np.asarray(sq), m * np.asarray(cl.basis(0)), atol=0)


def test_vectors_anticommute():
    for i in range(4):
        for j in range(i + 1, 4):
            a, b = cl.basis(1 + i), cl.basis(1 + j)
            np.testing.assert_allclose(
                np.asarray(cl.geometric_product(a, b) + cl.geometric_product(b, a)), 0.0, atol=0
            )


def test_hand_computed_products():
    e = {n: cl.basis(cl.blade_index(n)) for n in cl.BLADE_NAMES}
    # e1 e2 = e12, e2 e1 = -e12, e12 e12 = -1, e4 e4 = -1, e14 e14 = +1 (e1 e4 e1 e4 = -e1 e1 e4 e4 = +1)
    np.testing.assert_array_equal(cl.geometric_product(e["e1"], e["e2"]), e["e12"])
    np.testing.assert_array_equal(cl.geometric_product(e["e2"], e["e1"]), -e["e12"])
    np.testing.assert_array_equal(cl.geometric_product(e["e12"], e["e12"]), -e["1"])
    np.testing.assert_array_equal(cl.geometric_product(e["e14"], e["e14"]), e["1"])
    # pseudoscalar I = e1234: I^2 = -1 in Cl(3,1)
    np.testing.assert_array_equal(cl.geometric_product(e["e1234"], e["e1234"]), -e["1"])
    # e123 e4 = e1234
    np.testing.assert_array_equal(cl.geometric_product(e["e123"], e["e4"]), e["e1234"])


def test_cayley_table_is_signed_permutation():
    # every row/column of the product table hits each output blade exactly once with sign +-1
    for i in range(16):
        assert sorted(cl.PRODUCT_INDEX[i]) == list(range(16))
        assert sorted(cl.PRODUCT_INDEX[:, i]) == list(range(16))
    assert set(np.unique(cl.PRODUCT_SIGN)) == {-1.0, 1.0}
    assert int(np.count_nonzero(cl.CAYLEY)) == 256


def test_cayley_table_matches_matrix_representation():
    bm = cl.BLADE_MATRICES
    for i in range(16):
        for j in range(16):
            k, s = cl.PRODUCT_INDEX[i, j], cl.PRODUCT_SIGN[i, j]
            np.testing.assert_array_equal(bm[i] @ bm[j], s * bm[k])


def test_gamma_relations():
    g = cl.GAMMA
    for i in range(4):
        for j in range(4):
            want = 2 * (cl.METRIC[i] if i == j else 0.0) * np.eye(4)
            np.testing.assert_array_equal(g[i] @ g[j] + g[j] @ g[i], want)


@FAST
@given(MV, MV, MV)
def test_associativity(a, b, c):
    left, right = gp(gp(a, b), c), gp(a, gp(b, c))
    np.testing.assert_allclose(left, right, atol=2e-3 * (1 + np.abs(left).max()))


@FAST
@given(MV, MV, st.floats(-2, 2))
def test_bilinearity(a, b, s):
    np.testing.assert_allclose(gp(a * s + b, b), s * gp(a, b) + gp(b, b), atol=1e-3 * (1 + np.abs(gp(b, b)).max()))


@FAST
@given(MV, MV)
def test_reverse_is_anti_automorphism(a, b):
    lhs = np.asarray(cl.reverse(jnp.asarray(gp(a, b), jnp.float32)))
    rhs = gp(np.asarray(cl.reverse(jnp.asarray(b, jnp.float32))), np.asarray(cl.reverse(jnp.asarray(a, jnp.float32))))
    np.testing.assert_allclose(lhs, rhs, atol=1e-3 * (1 + np.abs(lhs).max()))


@FAST
@given(MV, MV)
def test_grade_involution_is_automorphism(a, b):
    inv = lambda x: np.asarray(cl.grade_involution(jnp.asarray(x, jnp.float32)))  # noqa: E731
    np.testing.assert_allclose(inv(gp(a, b)), gp(inv(a), inv(b)), atol=1e-3 * (1 + np.abs(gp(a, b)).max()))


@FAST
@given(MV, MV)
def test_matrix_map_is_homomorphism_and_invertible(a, b):
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    ma, mb = cl.to_matrix(a32), cl.to_matrix(b32)
    prod = cl.to_matrix(cl.geometric_product(a32, b32))
    np.testing.assert_allclose(np.asarray(prod), np.asarray(ma @ mb), atol=1e-3 * (1 + float(jnp.abs(prod).max())))
    np.testing.assert_allclose(np.asarray(cl.from_matrix(ma)), a, atol=1e-5)


@FAST
@given(MV, MV)
def test_einsum_reference_equals_sparse_product(a, b):
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    np.testing.assert_allclose(
        np.asarray(cl.geometric_product_einsum(a32, b32)), np.asarray(cl.geometric_product(a32, b32)), atol=1e-4
    )


@FAST
@given(MV)
def test_grade_projections_partition(a):
    x = jnp.asarray(a, jnp.float32)
    parts = sum(cl.grade_project(x, k) for k in range(5))
    np.testing.assert_allclose(np.asarray(parts), a, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cl.grade_project(cl.grade_project(x, 2), 2)), np.asarray(cl.grade_project(x, 2)))
    assert float(jnp.abs(cl.grade_project(x, (1, 3)) * cl.grade_mask((0, 2, 4))).max()) == 0.0


@FAST
@given(MV)
def test_norms(a):
    x = jnp.asarray(a, jnp.float32)
    # Euclidean coefficient norm = Frobenius norm of the matrix / 2
    np.testing.assert_allclose(float(cl.norm(x)), float(jnp.linalg.norm(cl.to_matrix(x))) / 2, rtol=1e-5, atol=1e-6)
    # quadratic form = scalar part of x ~x
    full = cl.geometric_product(x, cl.reverse(x))
    np.testing.assert_allclose(float(cl.quadratic_norm(x)), float(full[0]), rtol=1e-4, atol=1e-3)


def test_matrix_shape_errors_name_the_fix():
    with pytest.raises(ValueError, match="16 Cl"):
        cl.geometric_product(jnp.zeros(15), jnp.zeros(16))
    with pytest.raises(ValueError, match="4, 4"):
        cl.from_matrix(jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="valid names"):
        cl.blade_index("e5")


def test_product_chain_matches_fold():
    x = jax.random.normal(jax.random.key(0), (3, 5, 16))
    want = x[:, 0]
    for t in range(1, 5):
        want = cl.geometric_product(want, x[:, t])
    np.testing.assert_allclose(np.asarray(cl.product_chain(x, axis=1)), np.asarray(want), rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- Grace
def test_grace_weights_by_grade():
    w = np.asarray(gr.grace_weights())
    np.testing.assert_allclose(w[0], 1.0)
    np.testing.assert_allclose(w[1:5], PHI_INV, rtol=1e-6)
    np.testing.assert_allclose(w[5:11], PHI_INV**2, rtol=1e-6)
    np.testing.assert_allclose(w[11:15], PHI_INV**3, rtol=1e-6)
    np.testing.assert_allclose(w[15], PHI_INV, rtol=1e-6)


@FAST
@given(MV)
def test_grace_inverse_roundtrip_and_contraction(a):
    x = jnp.asarray(a, jnp.float32)
    np.testing.assert_allclose(np.asarray(gr.grace_inverse(gr.grace(x))), a, rtol=1e-5, atol=1e-5)
    assert float(cl.norm(gr.grace(x))) <= float(cl.norm(x)) + 1e-5


def test_stability_bounds_and_fixed_point():
    x = jax.random.normal(jax.random.key(1), (64, 16))
    s = np.asarray(gr.stability(x))
    assert (s >= 0).all() and (s <= 1).all()
    y = x
    for _ in range(60):
        y = gr.grace(y)
        y = y / cl.norm(y)[:, None]
    assert float(gr.stability(y).min()) > 0.999
    assert float(gr.stability(cl.basis(0))) == 1.0
    assert float(gr.stability(cl.basis(5))) == 0.0


def test_vorticity_is_antisymmetric_bivector():
    a, b = jax.random.normal(jax.random.key(2), (2, 8, 16))
    v = gr.vorticity(a, b)
    np.testing.assert_allclose(np.asarray(v), -np.asarray(gr.vorticity(b, a)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(v * (1 - cl.grade_mask(2))), 0.0, atol=0)
    # for two vectors the commutator is exactly their wedge: e1, e2 -> e12
    e1, e2 = cl.basis(1), cl.basis(2)
    np.testing.assert_allclose(np.asarray(gr.vorticity(e1, e2)), np.asarray(cl.basis(5)))


def test_vorticity_weighted_score():
    c = jax.random.normal(jax.random.key(3), (10, 16))
    s = gr.vorticity_weighted_score(c[:4], c)
    assert s.shape == (4, 10)
    np.testing.assert_array_equal(np.argmax(np.asarray(s), axis=1), np.arange(4))  # self scores highest
    np.testing.assert_allclose(np.asarray(jnp.diagonal(s)), 1.0 + PHI_INV, rtol=1e-5)
    s0 = gr.vorticity_weighted_score(c[:4], c, weight=0.0)
    assert float(jnp.abs(s0).max()) <= 1.0 + 1e-5


def test_blade_major_product_matches():
    a, b = jax.random.normal(jax.random.key(4), (2, 7, 16))
    np.testing.assert_allclose(
        np.asarray(cl.geometric_product_blade_major(a.T, b.T).T), np.asarray(cl.geometric_product(a, b)), atol=1e-5
    )
