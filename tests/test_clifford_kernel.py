"""Pallas Cl(3,1) kernels equal the jnp Cayley reference (interpret mode on CPU; GPU-marked on device)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqf_jax.ops import clifford as cl
from pallas_kernels import geometric_product as K

SHAPES = settings(max_examples=3, deadline=None)


def _mv(seed, shape, scale=1.0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32) * scale


@SHAPES
@given(n=st.integers(1, 70), block=st.sampled_from([16, 32]), layout=st.sampled_from(["soa", "aos"]), seed=st.integers(0, 999))
def test_product_kernel_matches_reference(n, block, layout, seed):
    a, b = _mv(seed, (n, 16)), _mv(seed + 1, (n, 16))
    want = np.asarray(cl.geometric_product(a, b))
    if layout == "soa":
        got = K.geometric_product_pallas(a.T, b.T, layout="soa", block=block, interpret=True).T
    else:
        got = K.geometric_product_pallas(a, b, layout="aos", block=block, interpret=True)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@SHAPES
@given(n=st.integers(1, 70), steps=st.integers(1, 6), layout=st.sampled_from(["soa", "aos"]), seed=st.integers(0, 999))
def test_chain_kernel_matches_reference(n, steps, layout, seed):
    x = _mv(seed, (n, steps, 16), 0.5)
    want = np.asarray(cl.product_chain(x, axis=1))
    if layout == "soa":
        got = K.product_chain_pallas(jnp.transpose(x, (1, 2, 0)), layout="soa", block=16, interpret=True).T
    else:
        got = K.product_chain_pallas(x, layout="aos", block=16, interpret=True)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


@SHAPES
@given(n=st.integers(1, 70), steps=st.integers(1, 5), vocab=st.integers(1, 40), seed=st.integers(0, 999))
def test_gather_chain_kernel_matches_reference(n, steps, vocab, seed):
    table = _mv(seed, (vocab, 16), 0.5)
    ids = jax.random.randint(jax.random.key(seed + 7), (n, steps), 0, vocab)
    want = np.asarray(cl.product_chain(table[ids], axis=1))
    got = K.gather_chain_pallas(table.T, ids.T, block=16, interpret=True).T
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_kernel_bf16_inputs_accumulate_in_f32():
    a, b = _mv(3, (64, 16)), _mv(4, (64, 16))
    got = K.geometric_product_pallas(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), layout="aos", block=32, interpret=True)
    assert got.dtype == jnp.bfloat16
    want = cl.geometric_product(a.astype(jnp.bfloat16).astype(jnp.float32), b.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), rtol=2e-2, atol=5e-2)


def test_kernel_shape_errors_name_the_fix():
    with pytest.raises(K.KernelShapeError, match="aos"):
        K.geometric_product_pallas(jnp.zeros((8, 16)), jnp.zeros((8, 16)), layout="soa", interpret=True)
    with pytest.raises(K.KernelShapeError, match="power of two"):
        K.geometric_product_pallas(jnp.zeros((16, 8)), jnp.zeros((16, 8)), block=24, interpret=True)


def test_kernels_lower_to_triton_for_cuda():
    """Every kernel (both layouts, bf16 too) lowers to a Triton custom call for CUDA, on any machine."""
    from functools import partial

    from jax import export

    sd = jax.ShapeDtypeStruct
    n = 1 << 14
    cases = {
        "cl31_gp_soa": (partial(K.geometric_product_pallas, layout="soa"), (sd((16, n), jnp.float32),) * 2),
        "cl31_gp_aos": (partial(K.geometric_product_pallas, layout="aos"), (sd((n, 16), jnp.bfloat16),) * 2),
        "cl31_chain_soa": (partial(K.product_chain_pallas, layout="soa"), (sd((4, 16, n), jnp.float32),)),
        "cl31_chain_aos": (partial(K.product_chain_pallas, layout="aos"), (sd((n, 4, 16), jnp.float32),)),
        "cl31_gather_chain": (K.gather_chain_pallas, (sd((16, 259), jnp.float32), sd((4, n), jnp.int32))),
    }
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    for name, (fn, args) in cases.items():
        text = export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=checks)(*args).mlir_module()
        calls = [line.split('name = "')[1].split('"')[0] for line in text.splitlines() if "xla.gpu.triton" in line]
        assert calls == [name]


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["soa", "aos"])
def test_kernels_on_gpu(layout):
    n = 1 << 16
    a, b = _mv(0, (n, 16)), _mv(1, (n, 16))
    want = np.asarray(cl.geometric_product(a, b))
    if layout == "soa":
        got = K.geometric_product_pallas(a.T, b.T, layout="soa").T
        chain = K.product_chain_pallas(jnp.stack([a.T, b.T, a.T]), layout="soa").T
    else:
        got = K.geometric_product_pallas(a, b, layout="aos")
        chain = K.product_chain_pallas(jnp.stack([a, b, a], axis=1), layout="aos")
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    want_chain = np.asarray(cl.geometric_product(cl.geometric_product(a, b), a))
    np.testing.assert_allclose(np.asarray(chain), want_chain, rtol=1e-3, atol=1e-3)
    ids = jax.random.randint(jax.random.key(2), (4, n), 0, 259)
    table = _mv(3, (259, 16), 0.5)
    g = K.gather_chain_pallas(table.T, ids).T
    np.testing.assert_allclose(np.asarray(g), np.asarray(cl.product_chain(table[ids.T], axis=1)), rtol=1e-3, atol=1e-4)
