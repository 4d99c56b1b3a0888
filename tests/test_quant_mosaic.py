"""The Hopper form (pallas_kernels/quant/mosaic.py): its layout (prepare_mosaic), the jnp model of what the kernel
feeds wgmma, the NF4 select tree, the kernel's tracing on CPU, clear errors for weights it cannot take, and the
real kernel on a Hopper GPU (marked gpu). The kernel's lowering for CUDA runs on CPU and is checked there
(tests/test_quant_mosaic_lower.py: layouts, relayouts and the inline PTX each variant emits); jax 0.10's Mosaic
GPU interpreter stops on the warp-specialized pipeline (run_scoped with collective axes; loads from tiled shared
memory), so the kernel's numbers are checked on the GPU only."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hqf_jax.ops.quant_grids import NF4_LEVELS
from hqf_jax.quant.linear import prepare
from hqf_jax.quant.qtensor import dequantize_matrix
from pallas_kernels.quant import KernelLayoutError
from pallas_kernels.quant import mosaic as M
from tests.quant_cases import check_product, mosaic_abstract, quant_case


_case, _check, _abstract = quant_case, check_product, mosaic_abstract
_prep = M.prepare_mosaic_jit  # one compile per weight shape, not one per eager op
_model = jax.jit(M.decode_model)




SPECS = ["int4", "int4:group_size=128", "int4z:group_size=128", "nf4", "nf4dq:dq_block=4", "nf4:group_size=256",
         "phi4", "int8", "int8:symmetric=false:group_size=128"]


@pytest.mark.parametrize("spec", ["int4", "nf4"])
def test_layers_lay_out_through_one_compile_per_shape(spec):
    """prepare_for(q, "mosaic"), what a quantized layer holds, is prepare_mosaic run op by op, array for array; it
    compiles once per weight shape and codec, so a second weight of the shape compiles nothing."""
    from hqf_jax.quant.linear import prepare_for

    (_, q1), (_, q2) = _case(spec, 384, 128, 1, seed=1), _case(spec, 384, 128, 1, seed=2)  # a shape of its own
    before = M.prepare_mosaic_jit._cache_size()
    first = prepare_for(q1, "mosaic")
    assert M.prepare_mosaic_jit._cache_size() == before + 1  # through the jitted layout
    second = prepare_for(q2, "mosaic")
    assert M.prepare_mosaic_jit._cache_size() == before + 1
    for q, mw in ((q1, first), (q2, second)):
        eager = M.prepare_mosaic(prepare(q), shuffle=spec == "nf4")
        assert jax.tree.structure(mw) == jax.tree.structure(eager)  # the same static fields (plan, levels, ...)
        for a, b in zip(jax.tree.leaves(mw), jax.tree.leaves(eager)):
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    assert not np.array_equal(np.asarray(first.w, np.int8), np.asarray(second.w, np.int8))


@pytest.mark.parametrize("spec", SPECS)
def test_layout_is_the_quantized_weight(spec):
    """prepare_mosaic keeps every code (int4 in range, exact) and the group multipliers; the kernel's jnp model
    is the dequantized weight within the bf16 roundings of each element."""
    _, q = _case(spec, 256, 128, 1)
    mw = _prep(prepare(q))
    ng = 256 // mw.group
    bits = 8 if spec.startswith("int8") else 4
    assert mw.bits == bits and mw.w.dtype == (jnp.int8 if bits == 8 else jnp.int4)
    assert mw.shape == (128, 256) and mw.w.shape[1:] == (128, mw.group)
    assert mw.w.shape[0] == mw.plan.n_groups >= ng and mw.scale.shape == (mw.plan.n_groups, 128)
    assert mw.scale.dtype == jnp.bfloat16
    assert (mw.offset is not None) == (spec.startswith("int4z") or "symmetric=false" in spec)
    codes = np.asarray(q.codes["idx" if spec.startswith("phi") else "q"], np.int64)
    signed = np.asarray(mw.w.astype(jnp.int32))[:ng].transpose(1, 0, 2).reshape(128, 256)
    symmetric = spec in ("int4", "int4:group_size=128", "int8")
    centre = 2 ** (bits - 1) - (1 if symmetric else 0)
    np.testing.assert_array_equal(signed, codes - centre)
    wm = np.asarray(dequantize_matrix(q), np.float32)
    model = np.asarray(_model(mw))
    # bf16 roundings (unit 2^-8): the multiplier and the product; NF4 and the φ-grid also their level
    roundings = 3 if spec.startswith(("nf4", "phi")) else 2
    err = np.abs(model - wm) / np.maximum(np.abs(wm), 1e-30)
    assert np.all((err <= roundings * 2.0**-8) | (wm == 0)), float(np.max(err))
    # `bits` a weight plus bf16 group multipliers (and offsets)
    assert mw.nbytes < 128 * 256 * (bits / 8 + 1 / 6) * mw.plan.n_groups / ng
    with pytest.raises(KernelLayoutError, match="levels"):  # a codec without its table (or int with one) is refused
        dataclasses.replace(mw, levels=None if mw.levels else tuple(range(16)))


@pytest.mark.parametrize("spec", ["nf4", "nf4:group_size=256", "phi4"])
def test_shuffled_layout_is_the_same_weight(spec):
    """prepare_mosaic(shuffle=True) stores each group's columns in nf4_words.column_order (so the kernel's lookup
    skips the relayout): other codes in each group, the same weight by the kernel's jnp model; int4 is refused and
    so are the decodes that read the weight's own column order."""
    _, q = _case(spec, 512, 128, 1)
    plain, shuffled = M.prepare_mosaic(prepare(q)), M.prepare_mosaic(prepare(q), shuffle=True)
    assert shuffled.shuffled and not np.array_equal(np.asarray(plain.w, np.int8), np.asarray(shuffled.w, np.int8))
    np.testing.assert_array_equal(np.asarray(_model(shuffled)), np.asarray(_model(plain)))
    with pytest.raises(KernelLayoutError, match="nf4='words'"):
        M.resolve(shuffled, 8, M.MosaicBlocks(nf4="prmt"))
    _, q4 = _case("int4", 256, 128, 1)
    with pytest.raises(KernelLayoutError, match="NF4 and phi4"):
        M.prepare_mosaic(prepare(q4), shuffle=True)
    x = jax.ShapeDtypeStruct((16, 512), jnp.bfloat16)  # the kernel traces with it
    assert jax.eval_shape(lambda x, mw: M.mosaic_matmul(x, mw), x, _abstract(spec, 512, 256, shuffle=True)).shape == (
        16, 256)


@pytest.mark.parametrize("n,ng,g", [(11008, 64, 64), (4096, 172, 64), (4096, 64, 64), (768, 72, 64),
                                    (2048, 88, 64), (256, 3, 64), (28672, 16, 256), (12288, 32, 256)])
def test_plan_splits_into_full_waves_and_fits(n, ng, g):
    """The plan divides its padded groups, pads <= 5%, keeps >= 4 steps a program, does not split K into a
    mostly-empty last wave, and (groups of 256: a 4-groups-per-step form would not fit) runs at every batch."""
    p = M.plan_for(n, ng, g)
    tiles = n // (2 * p.wg_rows)
    assert n % (2 * p.wg_rows) == 0 and p.n_groups % (p.split_k * p.groups) == 0
    assert ng <= p.n_groups <= ng * 1.05 and p.n_groups // (p.split_k * p.groups) >= min(4, ng)
    progs = tiles * p.split_k
    assert progs <= 132 or p.split_k == 1 or -(-progs // 132) * 132 <= 1.5 * progs  # no mostly-empty last wave
    assert M.smem_bytes(16, g, p.groups, p.wg_rows, 2, True) <= M.SMEM_BYTES


def test_padded_groups_change_nothing():
    x, q = _case("int4z:group_size=64", 192, 128, 4)
    pw = prepare(q)
    a, b = _prep(pw), _prep(pw, M.Plan(64, 2, 2, 8))  # 3 groups padded to 8
    assert b.w.shape[0] == 8 and b.shape == a.shape == (128, 192)
    # the padded groups are zero codes, zero scales and zero offsets: they add nothing whatever x holds there
    for arr in (b.w.astype(jnp.int32), b.scale, b.offset):
        assert not np.any(np.asarray(arr)[3:]) and np.any(np.asarray(arr)[:3])
    np.testing.assert_array_equal(np.asarray(_model(a)), np.asarray(_model(b)))
    blocks = M.resolve(b, 4)
    assert (blocks.split_k, blocks.groups, blocks.wg_rows, blocks.block_b) == (2, 2, 64, 16)


def test_resolve_fits_shared_memory():
    mw = _abstract("int4", 1024, 256, M.Plan(128, 4, 1, 16))
    r = M.resolve(mw, 256)  # a 128-row batch tile does not fit beside 4 groups of 256 rows: it shrinks
    assert r.block_b < 128 and M.smem_bytes(r.block_b, 64, 4, 128, r.stages, False) <= M.SMEM_BYTES
    with pytest.raises(KernelLayoutError, match="shared memory"):
        M.resolve(mw, 256, M.MosaicBlocks(block_b=128, stages=4))


def test_nf4_select_tree_is_the_table():
    v = jnp.arange(-8, 8, dtype=jnp.float32)
    for dt in (jnp.float32, jnp.bfloat16):
        np.testing.assert_array_equal(np.asarray(M.nf4_level(v.astype(dt)), np.float32),
                                      NF4_LEVELS.astype(dt).astype(np.float32))


@pytest.mark.parametrize("spec,b,over", [("int4", 16, {}), ("nf4", 16, {"nf4": "select"}), ("nf4", 16, {"nf4": "prmt"}),
                                         ("phi4", 16, {}), ("int4z:group_size=128", 37, {"split_k": 2}),
                                         ("nf4", 8, {"groups": 2, "split_k": 1, "acc": "ref"}),
                                         ("int4", 64, {"wg_rows": 128, "acc": "value"}),
                                         ("nf4", 128, {"probe": "no_decode"}),
                                         ("int4z", 40, {"probe": "copy", "acc": "value"}), ("int8", 16, {}),
                                         ("int8:symmetric=false:group_size=128", 40, {"split_k": 2, "acc": "value"})])
def test_kernel_traces(spec, b, over):
    """The kernel body traces (shapes, specs, the pipeline's carry) for each codec and option; output shape."""
    x = jax.ShapeDtypeStruct((b, 512), jnp.bfloat16)
    out = jax.eval_shape(lambda x, mw: M.mosaic_matmul(x, mw, M.MosaicBlocks(**over)), x, _abstract(spec, 512, 256))
    assert out.shape == (b, 256) and out.dtype == jnp.bfloat16


@pytest.mark.parametrize("spec,n,message", [("int:bits=6", 128, "4-bit codes .int: 4 or 8."),
                                            ("phi5u8", 128, "4-bit index without deviation"),
                                            ("int4:group_size=32", 128, "group_size=32"),
                                            ("int4", 96, "multiple of 128")])
def test_refuses_weights_it_cannot_take(spec, n, message):
    _, q = _case(spec, 256, n, 1)
    with pytest.raises(KernelLayoutError, match=message):
        M.prepare_mosaic(prepare(q))


def test_refuses_options_it_cannot_run():
    x, q = _case("int4", 256, 128, 8)
    mw = M.prepare_mosaic(prepare(q))
    with pytest.raises(KernelLayoutError, match="split_k=3 x groups=1"):
        M.mosaic_matmul(x, mw, M.MosaicBlocks(split_k=3, groups=1))
    with pytest.raises(KernelLayoutError, match="stages=0"):
        M.resolve(mw, 8, M.MosaicBlocks(stages=0))
    with pytest.raises(KernelLayoutError, match="wg_rows=128"):
        M.mosaic_matmul(x, mw, M.MosaicBlocks(wg_rows=128))  # 2 x 128 rows do not divide 128 outputs
    with pytest.raises(KernelLayoutError, match="block_b=12"):
        M.mosaic_matmul(x, mw, M.MosaicBlocks(block_b=12))
    with pytest.raises(KernelLayoutError, match="probe='skip'"):
        M.resolve(mw, 8, M.MosaicBlocks(probe="skip"))
    with pytest.raises(KernelLayoutError, match="nf4='table'"):
        M.resolve(mw, 8, M.MosaicBlocks(nf4="table"))


def _gpu_blocks(spec):
    """Explicit options per case; groups of 256 columns, and 8-bit codes, take half the groups per step (shared
    memory)."""
    wide = "256" in spec or spec.startswith("int8")
    return [(8, M.MosaicBlocks()), (16, M.MosaicBlocks(split_k=2, groups=1, acc="value")),
            (64, M.MosaicBlocks(stages=2, groups=1, split_k=1)),
            (100, M.MosaicBlocks(block_b=32 if wide else 64, groups=2)),
            (32, M.MosaicBlocks(groups=2 if wide else 4, wg_rows=128, split_k=1)), (300, M.MosaicBlocks())]


GPU_CASES = [(spec, b, blocks) for spec in SPECS for b, blocks in _gpu_blocks(spec)] + [
    ("nf4", 24, M.MosaicBlocks(nf4="select")), ("nf4", 24, M.MosaicBlocks(nf4="prmt")),
    ("nf4:group_size=256", 40, M.MosaicBlocks(nf4="prmt", wg_rows=64)),
    ("int4", 1, M.MosaicBlocks(pad_x=False)), ("nf4", 37, M.MosaicBlocks(pad_x=False)),
    ("int8", 200, M.MosaicBlocks(pad_x=False)), ("nf4", 24, M.MosaicBlocks(nf4="words8")),
    ("phi4:group_size=128", 64, M.MosaicBlocks(nf4="words8", wg_rows=128)),
    ("nf4", 1, M.MosaicBlocks()), ("phi4", 3, M.MosaicBlocks()), ("int8", 5, M.MosaicBlocks()),  # defaults below 8:
    ("nf4", 8, M.MosaicBlocks(nf4="words"))]  # x unpadded, the "words8" lookup; the half-word lookup


@pytest.mark.parametrize("spec,b,blocks", GPU_CASES)
def test_gpu_cases_fit(spec, b, blocks):
    """Every GPU case's options resolve for its weight (divisibility, and shared memory by the form's own
    estimate, smem_bytes: Mosaic's real allocation is only checked on the GPU). The H200 run of 2026-11-30 had
    two g=256 cases that resolve now refuses."""
    r = M.resolve(_abstract(spec, 1024, 512), b, blocks)
    assert r.block_b >= 16 and r.stages >= 1


@pytest.mark.gpu
@pytest.mark.parametrize("spec,b,blocks", GPU_CASES)
def test_mosaic_on_gpu(spec, b, blocks):
    x, q = _case(spec, 1024, 512, b, seed=b)
    _check(M.mosaic_matmul_jit(x, M.prepare_mosaic(prepare(q)), blocks), x, q)


@pytest.mark.gpu
@pytest.mark.parametrize("spec,b,nf4", [("nf4", 8, "words"), ("nf4:group_size=256", 100, "words"),
                                        ("phi4", 32, "words"), ("nf4dq:dq_block=4", 16, "words"),
                                        ("phi4", 32, "words8"), ("nf4", 1, "words8"), ("phi4:group_size=128", 5, "words8")])
def test_mosaic_shuffled_on_gpu(spec, b, nf4):
    """Codes stored in the lookup's column order: the kernel skips the relayout and gives the same product."""
    x, q = _case(spec, 1024, 512, b, seed=b)
    _check(M.mosaic_matmul_jit(x, M.prepare_mosaic(prepare(q), shuffle=True), M.MosaicBlocks(nf4=nf4)), x, q)


@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["int4", "int4z:group_size=128"])
def test_mosaic_padded_plan_on_gpu(spec):
    """A plan that pads K (5 groups -> 6, split 3): the padded groups contribute nothing, with x padded by XLA or
    read past its end by the copy engine (pad_x=False)."""
    x, q = _case(spec, 5 * (128 if "128" in spec else 64), 256, 24, seed=3)
    mw = M.prepare_mosaic(prepare(q), M.Plan(64, 1, 3, 6))
    _check(M.mosaic_matmul_jit(x, mw), x, q)
    _check(M.mosaic_matmul_jit(x, mw, M.MosaicBlocks(pad_x=False)), x, q)
