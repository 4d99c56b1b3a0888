"""The Hopper form (pallas_kernels/quant/mosaic.py): its layout (prepare_mosaic), the jnp model of what the kernel
feeds wgmma, the NF4 select tree, the kernel's tracing on CPU, clear errors for weights it cannot take, and the
real kernel on a Hopper GPU (marked gpu). Mosaic GPU has no CPU lowering, and jax 0.10's Mosaic GPU interpreter
stops on the warp-specialized pipeline (run_scoped with collective axes; loads from tiled shared memory), so the
kernel's numbers are checked on the GPU only."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hqf_jax.ops.quant_grids import NF4_LEVELS
from hqf_jax.quant.config import parse_method
from hqf_jax.quant.linear import placeholder, prepare
from hqf_jax.quant.qtensor import dequantize_matrix
from pallas_kernels.quant import KernelLayoutError
from pallas_kernels.quant import mosaic as M
from tests.quant_cases import check_product, quant_case


_case, _check = quant_case, check_product
_prep = jax.jit(M.prepare_mosaic, static_argnums=1)  # one compile per weight shape, not one per eager op
_model = jax.jit(M.decode_model)


def _abstract(spec, k, n, plan=None, shuffle=False):
    """The MosaicWeight of a (k, n) weight quantized by spec, shapes only (no quantization work)."""
    return jax.eval_shape(lambda pw: M.prepare_mosaic(pw, plan, shuffle), placeholder(parse_method(spec), n, k))


SPECS = ["int4", "int4:group_size=128", "int4z:group_size=128", "nf4", "nf4dq:dq_block=4", "nf4:group_size=256",
         "phi4"]


@pytest.mark.parametrize("spec", SPECS)
def test_layout_is_the_quantized_weight(spec):
    """prepare_mosaic keeps every code (int4 in range, exact) and the group multipliers; the kernel's jnp model
    is the dequantized weight within the bf16 roundings of each element."""
    _, q = _case(spec, 256, 128, 1)
    mw = _prep(prepare(q))
    ng = 256 // mw.group
    assert mw.w.dtype == jnp.int4 and mw.shape == (128, 256) and mw.w.shape[1:] == (128, mw.group)
    assert mw.w.shape[0] == mw.plan.n_groups >= ng and mw.scale.shape == (mw.plan.n_groups, 128)
    assert mw.scale.dtype == jnp.bfloat16
    assert (mw.offset is not None) == spec.startswith("int4z")
    codes = np.asarray(q.codes["idx" if spec.startswith("phi") else "q"], np.int64)
    signed = np.asarray(mw.w.astype(jnp.int32))[:ng].transpose(1, 0, 2).reshape(128, 256)
    centre = 7 if spec in ("int4", "int4:group_size=128") else 8
    np.testing.assert_array_equal(signed, codes - centre)
    wm = np.asarray(dequantize_matrix(q), np.float32)
    model = np.asarray(_model(mw))
    # bf16 roundings (unit 2^-8): the multiplier and the product; NF4 and the φ-grid also their level
    roundings = 3 if spec.startswith(("nf4", "phi")) else 2
    err = np.abs(model - wm) / np.maximum(np.abs(wm), 1e-30)
    assert np.all((err <= roundings * 2.0**-8) | (wm == 0)), float(np.max(err))
    assert mw.nbytes < 128 * 256 * 2 / 3 * mw.plan.n_groups / ng  # 4 bits a weight plus bf16 group multipliers
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
                                         ("int4z", 40, {"probe": "copy", "acc": "value"})])
def test_kernel_traces(spec, b, over):
    """The kernel body traces (shapes, specs, the pipeline's carry) for each codec and option; output shape."""
    x = jax.ShapeDtypeStruct((b, 512), jnp.bfloat16)
    out = jax.eval_shape(lambda x, mw: M.mosaic_matmul(x, mw, M.MosaicBlocks(**over)), x, _abstract(spec, 512, 256))
    assert out.shape == (b, 256) and out.dtype == jnp.bfloat16


@pytest.mark.parametrize("spec,n,message", [("int8", 128, "4-bit"), ("phi5u8", 128, "4-bit index without deviation"),
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
    """Explicit options per case; groups of 256 columns take half the groups per step (shared memory)."""
    wide = "256" in spec
    return [(8, M.MosaicBlocks()), (16, M.MosaicBlocks(split_k=2, groups=1, acc="value")),
            (64, M.MosaicBlocks(stages=2, groups=1, split_k=1)),
            (100, M.MosaicBlocks(block_b=32 if wide else 64, groups=2)),
            (32, M.MosaicBlocks(groups=2 if wide else 4, wg_rows=128, split_k=1)), (300, M.MosaicBlocks())]


GPU_CASES = [(spec, b, blocks) for spec in SPECS for b, blocks in _gpu_blocks(spec)] + [
    ("nf4", 24, M.MosaicBlocks(nf4="select")), ("nf4", 24, M.MosaicBlocks(nf4="prmt")),
    ("nf4:group_size=256", 40, M.MosaicBlocks(nf4="prmt", wg_rows=64))]


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
@pytest.mark.parametrize("spec,b", [("nf4", 8), ("nf4:group_size=256", 100), ("phi4", 32), ("nf4dq:dq_block=4", 16)])
def test_mosaic_shuffled_on_gpu(spec, b):
    """Codes stored in the lookup's column order: the kernel skips the relayout and gives the same product."""
    x, q = _case(spec, 1024, 512, b, seed=b)
    _check(M.mosaic_matmul_jit(x, M.prepare_mosaic(prepare(q), shuffle=True)), x, q)


@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["int4", "int4z:group_size=128"])
def test_mosaic_padded_plan_on_gpu(spec):
    """A plan that pads K (5 groups -> 6, split 3): the padded groups contribute nothing."""
    x, q = _case(spec, 5 * (128 if "128" in spec else 64), 256, 24, seed=3)
    _check(M.mosaic_matmul_jit(x, M.prepare_mosaic(prepare(q), M.Plan(64, 1, 3, 6))), x, q)


def test_quant_linear_takes_the_hopper_form_where_it_can():
    """impl="mosaic": int4 layers hold the Hopper layout, a layer it cannot take (int8) keeps the Triton forms;
    on a CPU qlinear says the form needs a Hopper GPU; weight bytes count int4 codes at half a byte."""
    from hqf_jax.infer.engine import weight_bytes
    from hqf_jax.quant.linear import qlinear
    from hqf_jax.quant.model import QuantLinear
    from hqf_jax.quant.config import QuantConfigError

    x, q4 = _case("int4", 256, 128, 2)
    _, q8 = _case("int8", 256, 128, 2)
    l4, l8 = QuantLinear(q4, "mosaic"), QuantLinear(q8, "mosaic")
    assert l4.impl == "mosaic" and isinstance(l4.weight.get_value(), M.MosaicWeight)
    assert l8.impl == "pallas"
    mw = l4.weight.get_value()
    assert weight_bytes(l4) == mw.nbytes == 128 * mw.plan.n_groups * 64 // 2 + mw.scale.size * 2
    if jax.default_backend() == "cpu":
        with pytest.raises(QuantConfigError, match="Hopper GPU"):
            qlinear(x, mw, "mosaic")


def test_engine_takes_the_hopper_form_for_its_decode_batch(monkeypatch):
    """Engine(quant="int4", batch=B) with quant_impl "auto" on a Hopper GPU (backend and device faked: only
    weights are prepared, nothing runs): the layers the dispatcher's table sends to the Hopper form at B hold the
    Hopper layout, the same engine built for batch 1 keeps the Triton forms, and NF4 follows its own row."""
    from flax import nnx

    from hqf_jax.infer import Engine
    from hqf_jax.quant.model import QuantLinear
    from hqf_jax.nn.retnet import RetNetConfig, RetNetLM
    from pallas_kernels.quant import layout_table as T

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(T, "hopper", lambda: True)
    monkeypatch.setattr(T, "LAYOUTS", (T.Layout("int", 8, "mosaic", (128, 128)), T.Layout("nf4", 16, "mosaic",
                                                                                             (128, 128)),
                                       T.Layout("*", 1, "triton")))
    cfg = RetNetConfig(d_model=128, num_layers=1, num_heads=2, qk_dim=128, v_dim=128, ffn_dim=256, chunk_size=8)
    model = RetNetLM(cfg, nnx.Rngs(0))

    def impls(quant, batch):
        eng = Engine(model, dtype="float32", quant=quant, batch=batch, prompt_bucket=8)
        return {type(node.weight.get_value()).__name__: node.impl
                for _, node in nnx.iter_graph(eng.model) if isinstance(node, QuantLinear)}

    assert impls("int4", 8) == {"MosaicWeight": "mosaic"}
    assert impls("int4", 1) == {"PackedWeight": "pallas"}
    assert impls("nf4", 8) == {"PackedWeight": "pallas"} and impls("nf4", 16) == {"MosaicWeight": "mosaic"}


def test_stage_probe_arithmetic_and_cpu_exit():
    """bench.quant_mosaic_stages: the derived stage costs are the probe differences; on a CPU it exits 2."""
    from bench import quant_mosaic_stages as S

    t = dict(full=10e-6, no_decode=6e-6, copy=4e-6, floor=2e-6, bf16=20e-6)
    d = S.stage_row(t)
    assert d["decode"] == pytest.approx(4e-6) and d["tensor"] == pytest.approx(2e-6)
    assert d["copy_over_floor"] == pytest.approx(2.0) and d["x_bf16"] == pytest.approx(2.0)
    assert S.row_md("4096x11008", "int4/g64", 16, t, d).count("|") == S.HEADER.splitlines()[0].count("|")
    if jax.default_backend() == "cpu":
        assert S.main(["--shapes", "256x128"]) == 2


@pytest.mark.gpu
def test_stage_probes_compute_what_they_claim_on_gpu():
    """no_decode: wgmma on a tile of ones, so every output is the row sum of x; copy (value accumulator): zeros."""
    x, q = _case("int4", 512, 256, 16, seed=5)
    mw = M.prepare_mosaic(prepare(q))
    y = M.mosaic_matmul_jit(x, mw, M.MosaicBlocks(probe="no_decode")).astype(jnp.float32)
    want = jnp.sum(x.astype(jnp.float32), axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(y), np.broadcast_to(np.asarray(want), y.shape), rtol=2e-2, atol=2e-2)
    z = M.mosaic_matmul_jit(x, mw, M.MosaicBlocks(probe="copy", acc="value"))
    assert not np.any(np.asarray(z))


def test_sweep_configs_are_the_plan_first_and_resolve():
    """kernel_timing.mosaic_configs (the sweeps' forms): the plan, at depth 2, its value accumulator, then distinct (rows,
    groups) forms that resolve on the weight's padded groups; mosaic_cfg_str names the resolved form."""
    from hqf_jax.quant.kernel_timing import mosaic_cfg_str, mosaic_configs

    mw = _abstract("int4", 4096, 11008)
    cs = mosaic_configs(mw, 3)
    assert cs[:3] == [M.MosaicBlocks(), M.MosaicBlocks(stages=2), M.MosaicBlocks(acc="value")] and len(cs) == 6
    forms = {(c.wg_rows, c.groups) for c in cs[3:]}
    assert len(forms) == 3 and (mw.plan.wg_rows, mw.plan.groups) not in forms
    for c in cs:
        r = M.resolve(mw, 16, c)
        assert mw.plan.n_groups % (r.split_k * r.groups) == 0
    p = mw.plan
    assert mosaic_cfg_str(cs[0], mw, 1).startswith(f"g{p.groups}/r{p.wg_rows}/ref/sk{p.split_k}/st")
    nf = mosaic_configs(_abstract("nf4", 4096, 11008), 3)  # NF4: the two other decodes are forms of their own
    assert nf[3:5] == [M.MosaicBlocks(nf4="prmt"), M.MosaicBlocks(nf4="select")] and len(nf) == 8
    assert mosaic_cfg_str(nf[3]).endswith("/prmt") and mosaic_cfg_str(nf[4]).endswith("/select")
