"""The three retention forms compute one function (float32), and parallel/chunkwise share gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hqf_jax.ops import retention as R

jax.config.update("jax_default_matmul_precision", "highest")
# jitted: one compile per form and shape instead of one per primitive in eager mode (the suite's CPU time)
RJ = jax.jit(R.retention, static_argnames=("mode", "chunk_size"))


def _inputs(seed, b, h, t, dk, dv):
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(ks[0], (b, h, t, dk))
    k = jax.random.normal(ks[1], (b, h, t, dk))
    v = jax.random.normal(ks[2], (b, h, t, dv))
    return q, k, v


def _naive(q, k, v, g, offset=0):
    """Literal O(T^2) float64 transcription of the formula in the module docstring."""
    q, k, v, g = (np.asarray(x, np.float64) for x in (q, k, v, g))
    b, h, t, dk = q.shape
    out = np.zeros(v.shape)
    for hh in range(h):
        for n in range(t):
            pn = n + offset
            c = (1 - g[hh] ** (pn + 1)) / (1 - g[hh])
            r = np.array([(q[:, hh, n] * k[:, hh, m]).sum(-1) / np.sqrt(dk) * g[hh] ** (n - m) / np.sqrt(c) for m in range(n + 1)])  # (n+1, B)
            num = (r[:, :, None] * v[:, hh, : n + 1].transpose(1, 0, 2)).sum(0)
            out[:, hh, n] = num / np.maximum(np.abs(r.sum(0)), 1.0)[:, None]
    return out


@pytest.mark.parametrize("t,chunk", [(16, 4), (13, 4), (7, 8), (33, 16)])
def test_forms_agree_with_naive(t, chunk):
    q, k, v = _inputs(t, 2, 3, t, 8, 6)
    g = R.default_gammas(3, base=-2.0)  # strong decays so every term matters
    ref = _naive(q, k, v, g)
    for mode in R.MODES:
        o, _ = RJ(q, k, v, g, mode=mode, chunk_size=chunk)
        np.testing.assert_allclose(np.asarray(o), ref, rtol=2e-5, atol=2e-5, err_msg=mode)


def test_short_chunkwise_call_is_one_unpadded_chunk():
    """T below the chunk (a speculative verify of 4 bytes, chunk 64): one chunk of T, no padding to the chunk, and
    the same outputs and state as the recurrent form from a carried state."""
    q, k, v = _inputs(3, 2, 3, 12, 8, 6)
    g = R.default_gammas(3)
    _, st = RJ(q[:, :, :8], k[:, :, :8], v[:, :, :8], g, mode="recurrent")
    tail = (q[:, :, 8:], k[:, :, 8:], v[:, :, 8:])
    o, s = RJ(*tail, g, mode="chunkwise", chunk_size=64, state=st)
    o_ref, s_ref = RJ(*tail, g, mode="recurrent", state=st)
    np.testing.assert_allclose(o, o_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(s, s_ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda *x: R.retention_chunkwise(*x, g, st, 64))(*tail))
    assert " pad[" not in jaxpr, "a 4-step call padded to the 64-step chunk"
    padded = str(jax.make_jaxpr(lambda *x: R.retention_chunkwise(*x, g, st, 3))(*tail))
    assert " pad[" in padded  # the check above can fail: 4 steps in chunks of 3 are padded
    o0, s0 = R.retention_chunkwise(*(x[:, :, :0] for x in tail), g, st, 64)  # no steps: the state as it was
    assert o0.shape == (2, 3, 0, 6) and all(np.array_equal(a, b) for a, b in zip(s0, st))


@pytest.mark.parametrize("split", [5, 8, 11])
def test_state_carries_across_calls(split):
    """Prefill any form up to `split`, continue with any other: equals one call over all steps."""
    t, chunk = 19, 4
    q, k, v = _inputs(1, 2, 4, t, 8, 8)
    g = R.default_gammas(4)
    full, full_state = RJ(q, k, v, g, mode="parallel")
    for first in R.MODES:
        for second in R.MODES:
            o1, s = RJ(q[:, :, :split], k[:, :, :split], v[:, :, :split], g, mode=first, chunk_size=chunk)
            o2, s2 = RJ(q[:, :, split:], k[:, :, split:], v[:, :, split:], g, mode=second, chunk_size=chunk, state=s)
            np.testing.assert_allclose(np.concatenate([o1, o2], 2), full, rtol=1e-5, atol=1e-5, err_msg=f"{first}->{second}")
            for a, b in zip(s2, full_state):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_parallel_and_chunkwise_gradients_agree():
    q, k, v = _inputs(3, 2, 2, 21, 8, 8)
    g = R.default_gammas(2, base=-3.0)
    w = jax.random.normal(jax.random.PRNGKey(9), (2, 2, 21, 8))

    def loss(mode, q, k, v):
        o, s = R.retention(q, k, v, g, mode=mode, chunk_size=8)
        return (o * w).sum() + 0.1 * s.kv.sum()

    gp = jax.jit(jax.grad(lambda *a: loss("parallel", *a), argnums=(0, 1, 2)))(q, k, v)
    gc = jax.jit(jax.grad(lambda *a: loss("chunkwise", *a), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(gp, gc):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", R.POSITION_KINDS)
def test_rotation_is_relative(kind):
    """RoPE/xPos scores depend only on n - m: shifting all positions leaves q.k unchanged."""
    q, k, _ = _inputs(4, 1, 1, 6, 8, 8)
    pos = jnp.arange(6)
    q0, k0 = R.rotate_qk(q, k, pos, kind)
    q1, k1 = R.rotate_qk(q, k, pos + 37, kind)
    s0 = jnp.einsum("bhtd,bhsd->bhts", q0, k0)
    s1 = jnp.einsum("bhtd,bhsd->bhts", q1, k1)
    np.testing.assert_allclose(s0, s1, rtol=1e-4, atol=1e-4)
    if kind != "none":
        assert not np.allclose(q0, q)


def test_default_gammas_follow_the_paper():
    np.testing.assert_allclose(R.default_gammas(4), [1 - 2**-5, 1 - 2**-6, 1 - 2**-7, 1 - 2**-8])


def test_bad_shapes_and_modes_are_refused():
    q, k, v = _inputs(0, 1, 2, 4, 4, 4)
    with pytest.raises(ValueError, match="mode"):
        R.retention(q, k, v, R.default_gammas(2), mode="fast")
    with pytest.raises(ValueError, match="gammas"):
        R.retention(q, k, v, R.default_gammas(3))


def test_many_heads_with_gamma_rounding_to_one_stay_finite_and_exact():
    """With 32 heads, 1 - 2^(-5-h) rounds to exactly 1.0 in float32 for h >= 20: no decay, c_n = n + 1."""
    g = R.default_gammas(32)
    assert float(g[-1]) == 1.0
    q, k, v = _inputs(7, 1, 32, 9, 4, 4)
    ref = _naive(q, k, v, np.where(np.asarray(g) < 1, np.asarray(g, np.float64), 1 - 1e-12))
    for mode in R.MODES:
        o, _ = RJ(q, k, v, g, mode=mode, chunk_size=4)
        assert np.isfinite(np.asarray(o)).all(), mode
        np.testing.assert_allclose(np.asarray(o), ref, rtol=2e-5, atol=2e-5, err_msg=mode)


def test_row_norm_is_accurate_for_slow_decays():
    """c_n for gamma = 1 - 2^-20 at n = 1000, against float64: the cancellation-free form keeps ~1e-6."""
    g = jnp.asarray([1 - 2.0**-20], jnp.float32)
    got = float(R.row_norm(jnp.asarray([1000]), g)[0, 0])
    gd = 1 - 2.0**-20
    want = 1 / np.sqrt((1 - gd**1001) / (1 - gd))
    assert abs(got - want) / want < 1e-6


@pytest.mark.parametrize("mode", R.MODES)
def test_per_row_offsets_equal_each_row_at_its_own_offset(mode):
    """A batch whose rows sit at different positions (offset (B,), the inference engine's batches) computes
    each row as the float64 formula does at that row's offset."""
    q, k, v = _inputs(5, 3, 2, 11, 8, 8)
    g = R.default_gammas(2, base=-2.0)
    offsets = jnp.asarray([0, 4, 37], jnp.int32)
    st = R.init_state(3, 2, 8, 8)._replace(offset=offsets)
    o, state = RJ(q, k, v, g, mode=mode, chunk_size=4, state=st)
    for r, off in enumerate([0, 4, 37]):
        want = _naive(q[r:r + 1], k[r:r + 1], v[r:r + 1], g, offset=off)
        np.testing.assert_allclose(np.asarray(o[r:r + 1]), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(state.offset), [11, 15, 48])
