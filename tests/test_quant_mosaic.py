"""The Hopper form (pallas_kernels/quant/mosaic.py): its layout (prepare_mosaic), the jnp model of what the kernel
feeds wgmma, the NF4 select tree, the kernel's tracing on CPU, clear errors for weights it cannot take, and the
real kernel on a Hopper GPU (marked gpu). Mosaic GPU has no CPU lowering, and jax 0.10's Mosaic GPU interpreter
stops on the warp-specialized pipeline (run_scoped with collective axes; loads from tiled shared memory), so the
kernel's numbers are checked on the GPU only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hqf_jax import quant as Q
from hqf_jax.ops.quant_grids import NF4_LEVELS
from hqf_jax.ops.quant_matmul import dequant_matmul_ref
from hqf_jax.quant.linear import prepare
from hqf_jax.quant.qtensor import dequantize_matrix
from pallas_kernels.quant import KernelLayoutError
from pallas_kernels.quant import mosaic as M


def _case(spec, k, n, b, seed=0):
    kw, kx = jax.random.split(jax.random.key(seed))
    q = Q.quantize(jax.random.normal(kw, (k, n)) * 0.05, spec)
    return jax.random.normal(kx, (b, k)).astype(jnp.bfloat16), q


def _check(y, x, q):
    """|y - ref| within bf16 rounding of the weights and of the output (as tests/test_quant_tc.py)."""
    wm = dequantize_matrix(q)
    ref = np.asarray(dequant_matmul_ref(x, wm), np.float32)
    y = np.asarray(y, np.float32)
    scale = np.abs(np.asarray(x, np.float32)) @ np.abs(np.asarray(wm, np.float32)).T
    assert y.shape == ref.shape
    assert np.all(np.abs(y - ref) <= 2.0**-7 * (scale + np.abs(ref)) + 1e-6), float(np.max(np.abs(y - ref)))


SPECS = ["int4", "int4:group_size=128", "int4z:group_size=128", "nf4", "nf4dq:dq_block=4", "nf4:group_size=256"]


@pytest.mark.parametrize("spec", SPECS)
def test_layout_is_the_quantized_weight(spec):
    """prepare_mosaic keeps every code (int4 in range, exact) and the group multipliers; the kernel's jnp model
    is the dequantized weight within the bf16 roundings of each element."""
    _, q = _case(spec, 256, 128, 1)
    mw = M.prepare_mosaic(prepare(q))
    assert mw.w.dtype == jnp.int4 and mw.shape == (128, 256) and mw.w.shape == (256 // mw.group, 128, mw.group)
    assert mw.scale.shape == (256 // mw.group, 128) and mw.scale.dtype == jnp.bfloat16
    assert (mw.offset is not None) == spec.startswith("int4z")
    codes = np.asarray(q.codes["q"], np.int64)
    signed = np.asarray(mw.w.astype(jnp.int32)).transpose(1, 0, 2).reshape(128, 256)
    centre = 7 if spec in ("int4", "int4:group_size=128") else 8
    np.testing.assert_array_equal(signed, codes - centre)
    wm = np.asarray(dequantize_matrix(q), np.float32)
    model = np.asarray(M.decode_model(mw))
    # bf16 roundings (unit 2^-8): the multiplier and the product; NF4 also its level
    roundings = 3 if spec.startswith("nf4") else 2
    err = np.abs(model - wm) / np.maximum(np.abs(wm), 1e-30)
    assert np.all((err <= roundings * 2.0**-8) | (wm == 0)), float(np.max(err))
    assert mw.nbytes < 128 * 256 * 2 / 3  # 4 bits a weight plus bf16 group multipliers


def test_nf4_select_tree_is_the_table():
    v = jnp.arange(-8, 8, dtype=jnp.float32)
    for dt in (jnp.float32, jnp.bfloat16):
        np.testing.assert_array_equal(np.asarray(M.nf4_level(v.astype(dt)), np.float32),
                                      NF4_LEVELS.astype(dt).astype(np.float32))


@pytest.mark.parametrize("spec,b,over", [("int4", 16, {}), ("int4z:group_size=128", 37, {"split_k": 2}),
                                         ("nf4", 8, {"groups": 2, "acc": "ref"}), ("int4", 64, {"wg_rows": 128})])
def test_kernel_traces(spec, b, over):
    """The kernel body traces (shapes, specs, the pipeline's carry) for each codec and option; output shape."""
    x, q = _case(spec, 512, 256, b)
    mw = M.prepare_mosaic(prepare(q))
    out = jax.eval_shape(lambda x, mw: M.mosaic_matmul(x, mw, M.MosaicBlocks(**over)), x, mw)
    assert out.shape == (b, 256) and out.dtype == jnp.bfloat16


def test_refuses_what_it_cannot_run():
    _, q8 = _case("int8", 256, 128, 1)
    with pytest.raises(KernelLayoutError, match="4-bit"):
        M.prepare_mosaic(prepare(q8))
    _, qphi = _case("phi5u8", 256, 128, 1)
    with pytest.raises(KernelLayoutError, match="int4 and NF4"):
        M.prepare_mosaic(prepare(qphi))
    _, q32 = _case("int4:group_size=32", 256, 128, 1)
    with pytest.raises(KernelLayoutError, match="group_size=32"):
        M.prepare_mosaic(prepare(q32))
    _, qn = _case("int4", 256, 96, 1)
    with pytest.raises(KernelLayoutError, match="multiple of 128"):
        M.prepare_mosaic(prepare(qn))
    x, q = _case("int4", 256, 128, 8)
    mw = M.prepare_mosaic(prepare(q))
    with pytest.raises(KernelLayoutError, match="split_k=3"):
        M.mosaic_matmul(x, mw, M.MosaicBlocks(split_k=3))
    with pytest.raises(KernelLayoutError, match="wg_rows=128"):
        M.mosaic_matmul(x, mw, M.MosaicBlocks(wg_rows=128))  # 2 x 128 rows do not divide 128 outputs
    with pytest.raises(KernelLayoutError, match="block_b=12"):
        M.mosaic_matmul(x, mw, M.MosaicBlocks(block_b=12))


GPU_CASES = [(spec, b, blocks) for spec in SPECS for b, blocks in
             [(8, M.MosaicBlocks()), (16, M.MosaicBlocks(split_k=2, acc="ref")), (64, M.MosaicBlocks(stages=2)),
              (100, M.MosaicBlocks(block_b=64, groups=2)), (32, M.MosaicBlocks(groups=4, wg_rows=128, acc="ref"))]]


@pytest.mark.gpu
@pytest.mark.parametrize("spec,b,blocks", GPU_CASES)
def test_mosaic_on_gpu(spec, b, blocks):
    x, q = _case(spec, 1024, 512, b, seed=b)
    _check(M.mosaic_matmul_jit(x, M.prepare_mosaic(prepare(q)), blocks), x, q)
