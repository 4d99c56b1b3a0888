"""The Pallas decode step equals its jnp reference (ops.retention.retention_step) in interpret mode, lowers to
Triton for CUDA, and the engine decodes the same bytes with either."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export

from hqf_jax.ops import retention as R
from pallas_kernels.retention_decode import DecodeKernelError, retention_decode_step


def _case(b=3, h=2, dk=16, dv=32, offset=(0, 7, 300), dtype=jnp.float32):
    ks = jax.random.split(jax.random.PRNGKey(b * 7 + dk), 5)
    q, k = (jax.random.normal(ks[i], (b, h, dk)).astype(dtype) for i in (0, 1))
    v = jax.random.normal(ks[2], (b, h, dv)).astype(dtype)
    st = R.RetentionState(jax.random.normal(ks[3], (b, h, dk, dv)), jax.random.normal(ks[4], (b, h, dk)),
                          jnp.asarray(offset, jnp.int32))
    return (q, k, v, R.default_gammas(h, base=-2.0)), st


@pytest.mark.parametrize("b, h, dk, dv, block_v, offset, dtype", [
    (3, 2, 16, 32, 16, (0, 7, 300), jnp.float32),   # per-row positions, two Dv tiles
    (1, 3, 32, 64, 64, 5, jnp.float32),             # a scalar offset, H not a power of two
    (2, 2, 16, 32, 32, (1, 2), jnp.bfloat16),       # bf16 inputs, float32 state
])
def test_decode_kernel_equals_reference(b, h, dk, dv, block_v, offset, dtype):
    args, st = _case(b, h, dk, dv, offset, dtype)
    want, ws = R.retention_step(*args, st)
    got, gs = retention_decode_step(*args, st, block_v=block_v, interpret=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(np.asarray(gs.kv), np.asarray(ws.kv), rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(np.asarray(gs.ksum), np.asarray(ws.ksum), rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(np.asarray(gs.offset), np.asarray(ws.offset))


def test_decode_kernel_lowers_to_triton():
    args, st = _case()
    f = lambda q, k, v, g, s: retention_decode_step(q, k, v, g, s, block_v=16)
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    text = export.export(jax.jit(f), platforms=["cuda"], disabled_checks=checks)(*args, st).mlir_module()
    names = [line.split('name = "')[1].split('"')[0] for line in text.splitlines() if "xla.gpu.triton" in line]
    assert names == ["retention_decode"]


def test_decode_kernel_refuses_shapes_it_cannot_take():
    args, st = _case(dk=16, dv=32)
    with pytest.raises(DecodeKernelError, match="decode_impl='jnp'"):
        retention_decode_step(*args, st, block_v=24, interpret=True)


def test_engine_decodes_the_same_bytes_with_the_kernel():
    from hqf_jax.infer import Engine
    from hqf_jax.nn.retnet import RetNetConfig, RetNetLM

    cfg = RetNetConfig(d_model=32, num_layers=2, num_heads=2, qk_dim=32, v_dim=64, ffn_dim=64, chunk_size=8)
    model = RetNetLM(cfg, nnx.Rngs(0))
    prompts = [b"abc", b"a longer one"]
    jnp_ids = Engine(model, dtype="float32", prompt_bucket=16).generate_ids(prompts, 8)
    pallas_ids = Engine(model, dtype="float32", prompt_bucket=16, decode_impl="pallas").generate_ids(prompts, 8)
    np.testing.assert_array_equal(pallas_ids, jnp_ids)
