"""Pallas chunkwise retention equals the jnp reference: outputs, final state and every gradient.

CPU tests run the kernels in interpret mode and check that they lower to Triton for CUDA;
the tests marked ``gpu`` run the compiled kernels (``-m gpu`` on a machine with a GPU).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from hqf_jax.ops import retention as R
from pallas_kernels.retention import RetentionKernelError, Tiling, chunk_retention

jax.config.update("jax_default_matmul_precision", "highest")

on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")


def _case(seed, b, h, t, dk, dv, *, base=-2.0, offset=None, dtype=jnp.float32):
    ks = jax.random.split(jax.random.PRNGKey(seed), 9)
    q, k = (jax.random.normal(ks[i], (b, h, t, dk)).astype(dtype) for i in (0, 1))
    v = jax.random.normal(ks[2], (b, h, t, dv)).astype(dtype)
    g = R.default_gammas(h, base=base)
    state = None
    if offset is not None:
        state = R.RetentionState(
            jax.random.normal(ks[3], (b, h, dk, dv)), jax.random.normal(ks[4], (b, h, dk)), jnp.asarray(offset, jnp.int32)
        )
    # cotangents for o and for both parts of the returned state, so every path of the VJP is used
    cot = (jax.random.normal(ks[5], (b, h, t, dv)), jax.random.normal(ks[6], (b, h, dk, dv)), jax.random.normal(ks[7], (b, h, dk)))
    return (q, k, v, g), state, cot


def _run(fn, args, state, cot):
    """Outputs (o, S_T, z_T) and the gradients wrt q, k, v, gammas (and S_0, z_0 when a state comes in)."""

    def f(q, k, v, g, kv, ks):
        st = None if kv is None else R.RetentionState(kv, ks, state.offset)
        o, out = fn(q, k, v, g, st)
        return o, out.kv, out.ksum

    kv, ks = (None, None) if state is None else (state.kv, state.ksum)

    @jax.jit
    def go(q, k, v, g, kv, ks):
        outs, vjp = jax.vjp(f, q, k, v, g, kv, ks)
        return outs, vjp(cot)

    return go(*args, kv, ks)


def _assert_close(got, want, rtol, name):
    for i, (a, b) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert a.shape == b.shape, (name, i, a.shape, b.shape)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(np.abs(b).max(), 1.0), err_msg=f"{name} leaf {i}")


CASES = {
    # T and both head sizes need padding; an incoming state at offset 5
    "pad_t_pad_d_state": dict(b=2, h=3, t=37, dk=8, dv=12, offset=5, chunk=16, tiling=Tiling()),
    # no state, the paper's default decays, one chunk shorter than chunk_size; state tiles split
    # 2 x 2, output and gradient Dv tiles split in 2; forward states kept for the backward
    "no_state_split_tiles_saved_states": dict(
        b=1, h=2, t=20, dk=32, dv=32, offset=None, chunk=32, base=-5.0,
        tiling=Tiling(block_k_state=16, block_v_state=16, block_v_out=16, block_v_grad=16, save_states=True),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference_float32(name):
    p = dict(CASES[name])
    chunk, tiling = p.pop("chunk"), p.pop("tiling")
    args, state, cot = _case(0, **p)
    got = _run(lambda *a: chunk_retention(*a, chunk_size=chunk, interpret=True, tiling=tiling), args, state, cot)
    want = _run(lambda *a: R.retention_chunkwise(*a, chunk_size=chunk), args, state, cot)
    _assert_close(got[0], want[0], 2e-5, name + " outputs")
    _assert_close(got[1], want[1], 2e-5, name + " gradients")


def test_bfloat16_inputs_float32_accumulation():
    """bf16 q, k, v: outputs and gradients within bf16 rounding of the float32 reference on the same values."""
    args, state, cot = _case(1, 1, 2, 48, 16, 16, base=-5.0, offset=7, dtype=jnp.bfloat16)  # T = 3 chunks exactly
    got = _run(lambda *a: chunk_retention(*a, chunk_size=16, interpret=True), args, state, cot)
    args32 = tuple(x.astype(jnp.float32) for x in args)
    want = _run(lambda *a: R.retention_chunkwise(*a, chunk_size=16), args32, state, cot)
    assert got[0][0].dtype == jnp.float32 and got[1][0].dtype == jnp.bfloat16
    _assert_close(got[0], want[0], 2e-2, "bf16 outputs")
    _assert_close(got[1], want[1], 3e-2, "bf16 gradients")


def test_user_errors_name_the_fix():
    q = jnp.zeros((1, 1, 8, 16))
    g = R.default_gammas(1)
    with pytest.raises(RetentionKernelError, match="power of two"):
        chunk_retention(q, q, q, g, chunk_size=48, interpret=True)
    with pytest.raises(RetentionKernelError, match="cast them"):
        chunk_retention(q.astype(jnp.int32), q, q, g, interpret=True)
    with pytest.raises(ValueError, match="gammas"):
        chunk_retention(q, q, q, R.default_gammas(2), interpret=True)


def test_lowers_to_triton_for_cuda():
    """The bench shape (d=128, chunk 64, bf16) lowers to Triton kernels for CUDA, forward and backward."""
    sd = jax.ShapeDtypeStruct
    args = (sd((2, 4, 1000, 128), jnp.bfloat16),) * 3 + (sd((4,), jnp.float32),)

    def fwd(q, k, v, g):
        return chunk_retention(q, k, v, g)[0]

    def fwd_bwd(q, k, v, g):
        o, vjp = jax.vjp(fwd, q, k, v, g)
        return vjp(o)

    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    names = []
    for f in (fwd, fwd_bwd):
        text = export.export(jax.jit(f), platforms=["cuda"], disabled_checks=checks)(*args).mlir_module()
        names.append([line.split('name = "')[1].split('"')[0] for line in text.splitlines() if "xla.gpu.triton" in line])
    assert names[0] == ["retention_states", "retention_outputs"]
    assert sorted(names[1]) == sorted(["retention_states", "retention_outputs", "retention_states", "retention_dstates", "retention_grads"])


# ----------------------------------------------------------------------------- Triton lowering hazards


def _subjaxprs(params):
    for p in params.values():
        for sub in p if isinstance(p, (list, tuple)) else (p,):
            if hasattr(sub, "eqns"):
                yield sub
            elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                yield sub.jaxpr


def _raw_scalar_selects(jaxpr, literal_vars=frozenset()):
    """select_n equations whose case operands are weakly typed Python scalars (jaxpr literals, also
    through jit/closed_call arguments). The Pallas Triton lowering gives such a scalar the other
    operand's type, here the *predicate's* i1, so jnp.where(pred, 44, 64) computes False/False -> 0
    on the GPU (interpret mode is exact). Strongly typed literals (jnp.remainder's 1) lower right."""
    found = []
    is_raw = lambda x: (type(x).__name__ == "Literal" or x in literal_vars) and x.aval.weak_type  # noqa: E731
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "select_n" and any(is_raw(x) for x in eqn.invars[1:]):
            found.append(str(eqn))
        for sub in _subjaxprs(eqn.params):
            inner = frozenset(v for v, x in zip(sub.invars, eqn.invars) if len(sub.invars) == len(eqn.invars) and is_raw(x))
            found += _raw_scalar_selects(sub, inner)
    return found


def _kernel_jaxprs(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            yield eqn.params["name"], eqn.params["jaxpr"]
        for sub in _subjaxprs(eqn.params):
            yield from _kernel_jaxprs(sub)


def test_lint_finds_the_mislowered_select():
    """The lint below flags the expression that zeroed the backward's state weights on an H100."""
    from jax.experimental import pallas as pl

    def bad(o_ref):
        o_ref[...] = jnp.full((16,), jnp.where(pl.program_id(0) == 3, 44, 64).astype(jnp.float32))

    def good(o_ref):
        o_ref[...] = jnp.full((16,), 64.0 - 20.0 * (pl.program_id(0) == 3).astype(jnp.float32))

    out = jax.ShapeDtypeStruct((64,), jnp.float32)
    spec = pl.BlockSpec((16,), lambda i: (i,))
    found = []
    for kernel in (bad, good):
        f = pl.pallas_call(kernel, grid=(4,), out_specs=spec, out_shape=out, interpret=True)
        found.append(_raw_scalar_selects(next(_kernel_jaxprs(jax.make_jaxpr(f)().jaxpr))[1]))
        np.testing.assert_array_equal(f()[48:], 44.0)  # interpret mode computes both right
    assert len(found[0]) == 1 and found[1] == []


def test_kernels_have_no_python_scalar_selects():
    """No kernel of forward or backward (partial last chunk, state in) feeds Python scalars to select_n."""
    sd = jax.ShapeDtypeStruct
    q = sd((1, 2, 100, 32), jnp.bfloat16)
    state = R.init_state(1, 2, 32, 32)._replace(offset=jnp.asarray(3, jnp.int32))

    def fwd_bwd(q, k, v, g):
        o, vjp = jax.vjp(lambda *a: chunk_retention(*a, state=state, interpret=True)[0], q, k, v, g)
        return vjp(o)

    kernels = list(_kernel_jaxprs(jax.make_jaxpr(fwd_bwd)(q, q, q, sd((2,), jnp.float32)).jaxpr))
    assert sorted(n for n, _ in kernels) == sorted(["retention_states", "retention_outputs", "retention_states", "retention_dstates", "retention_grads"])
    assert {n: _raw_scalar_selects(j) for n, j in kernels if _raw_scalar_selects(j)} == {}


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("t,offset", [(300, None), (1000, 11)])
def test_gpu_matches_reference_float32(t, offset):
    args, state, cot = _case(2, 2, 4, t, 64, 64, base=-5.0, offset=offset)
    got = _run(lambda *a: chunk_retention(*a, chunk_size=64), args, state, cot)
    want = _run(lambda *a: R.retention_chunkwise(*a, chunk_size=64), args, state, cot)
    _assert_close(got[0], want[0], 1e-4, "gpu f32 outputs")
    _assert_close(got[1], want[1], 1e-4, "gpu f32 gradients")


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize(
    "t,offset,tiling",
    [(2048, None, Tiling()), (520, 3, Tiling(block_v_grad=128, warps_grad=4, save_states=True))],  # 2nd: the bench's tuned tiling
)
def test_gpu_matches_reference_bfloat16(t, offset, tiling):
    args, state, cot = _case(3, 2, 4, t, 128, 128, base=-5.0, offset=offset, dtype=jnp.bfloat16)
    got = _run(lambda *a: chunk_retention(*a, chunk_size=64, tiling=tiling), args, state, cot)
    args32 = tuple(x.astype(jnp.float32) for x in args)
    want = _run(lambda *a: R.retention_chunkwise(*a, chunk_size=64), args32, state, cot)
    _assert_close(got[0], want[0], 2e-2, "gpu bf16 outputs")
    _assert_close(got[1], want[1], 3e-2, "gpu bf16 gradients")
