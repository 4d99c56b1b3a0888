"""The Hopper form in use (pallas_kernels/quant/mosaic.py): quantized layers and engines that take it, the stage
probe's arithmetic and the sweeps' configs on CPU, the stage probes on a Hopper GPU (marked gpu). The form's
layout and kernel: tests/test_quant_mosaic.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hqf_jax.quant.linear import prepare
from pallas_kernels.quant import mosaic as M
from tests.quant_cases import mosaic_abstract as _abstract
from tests.quant_cases import quant_case as _case


def test_quant_linear_takes_the_hopper_form_where_it_can():
    """impl="mosaic": int4 and int8 layers hold the Hopper layout, a layer it cannot take (phi5u8: a 5-bit index
    and a deviation) keeps the Triton forms; on a CPU qlinear says the form needs a Hopper GPU; weight bytes count
    int4 codes at half a byte, int8 at one."""
    from hqf_jax.infer.engine import weight_bytes
    from hqf_jax.quant.linear import qlinear
    from hqf_jax.quant.model import QuantLinear
    from hqf_jax.quant.config import QuantConfigError

    x, q4 = _case("int4", 256, 128, 2)
    _, q8 = _case("int8", 256, 128, 2)
    _, q5 = _case("phi5u8", 256, 128, 2)
    l4, l8, l5 = QuantLinear(q4, "mosaic"), QuantLinear(q8, "mosaic"), QuantLinear(q5, "mosaic")
    assert l4.impl == l8.impl == "mosaic" and isinstance(l4.weight.get_value(), M.MosaicWeight)
    assert l5.impl == "pallas"
    mw, mw8 = l4.weight.get_value(), l8.weight.get_value()
    assert weight_bytes(l4) == mw.nbytes == 128 * mw.plan.n_groups * 64 // 2 + mw.scale.size * 2
    assert weight_bytes(l8) == mw8.nbytes == 128 * mw8.plan.n_groups * 64 + mw8.scale.size * 2
    if jax.default_backend() == "cpu":
        with pytest.raises(QuantConfigError, match="Hopper GPU"):
            qlinear(x, mw, "mosaic")


def test_table_codec_layers_hold_pre_shuffled_codes():
    """prepare_for(q, "mosaic") stores NF4 and phi4 codes in the lookup's column order (the kernel skips the
    relayout) and int codes as they are; the shuffled weight decodes to the unshuffled one exactly."""
    from hqf_jax.quant.linear import prepare_for
    from pallas_kernels.quant.mosaic_layout import prepare_mosaic

    for spec, shuffled in (("nf4", True), ("phi4", True), ("int4", False), ("int8", False)):
        _, q = _case(spec, 256, 128, 2)
        mw = prepare_for(q, "mosaic")
        assert mw.shuffled == shuffled, spec
        plain = prepare_mosaic(prepare(q))
        np.testing.assert_array_equal(M.decode_model(mw), M.decode_model(plain), err_msg=spec)
        if shuffled:
            assert not np.array_equal(np.asarray(mw.w, np.int8), np.asarray(plain.w, np.int8)), spec


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


def test_method_layout_names_both_layouts_of_a_weight():
    """The sweeps' --methods entries: "nf4+shuffled" is NF4 with shuffled codes (labelled so), --shuffle shuffles
    every table codec, int codes never (refused when asked by name), any other suffix refused."""
    from hqf_jax.quant.kernel_timing import method_layout

    assert method_layout("nf4") == ("nf4", False, "nf4/g64")
    assert method_layout("phi4+shuffled")[1:] == (True, "phi4/g64+shuffled")
    assert method_layout("nf4", shuffle=True)[1] and not method_layout("int4", shuffle=True)[1]
    for bad, match in (("int4+shuffled", "table codecs"), ("nf4+sorted", "suffix")):
        with pytest.raises(ValueError, match=match):
            method_layout(bad)


def test_sweep_configs_are_the_plan_first_and_resolve():
    """kernel_timing.mosaic_configs (the sweeps' forms): the plan, at depth 2, its value accumulator, x unpadded and
    padded (one of them is the plan's own choice at a batch: unpadded below 8), then distinct (rows, groups) forms
    that resolve on the weight's padded groups; mosaic_cfg_str names the resolved form."""
    from hqf_jax.quant.kernel_timing import mosaic_cfg_str, mosaic_configs

    mw = _abstract("int4", 4096, 11008)
    cs = mosaic_configs(mw, 3)
    assert cs[:5] == [M.MosaicBlocks(), M.MosaicBlocks(stages=2), M.MosaicBlocks(acc="value"),
                      M.MosaicBlocks(pad_x=False), M.MosaicBlocks(pad_x=True)] and len(cs) == 8
    assert [mosaic_cfg_str(c, mw, 1).endswith("/nopad") for c in (cs[0], cs[3], cs[4])] == [True, True, False]
    assert [mosaic_cfg_str(c, mw, 8).endswith("/nopad") for c in (cs[0], cs[3], cs[4])] == [False, True, False]
    forms = {(c.wg_rows, c.groups) for c in cs[5:]}
    assert len(forms) == 3 and (mw.plan.wg_rows, mw.plan.groups) not in forms
    for c in cs:
        r = M.resolve(mw, 16, c)
        assert mw.plan.n_groups % (r.split_k * r.groups) == 0
    p = mw.plan
    assert mosaic_cfg_str(cs[0], mw, 1).startswith(f"g{p.groups}/r{p.wg_rows}/ref/sk{p.split_k}/st")
    nf = mosaic_configs(_abstract("nf4", 4096, 11008), 3)  # NF4: the two other decodes are forms of their own
    assert nf[5:8] == [M.MosaicBlocks(nf4=d) for d in ("words", "prmt", "select")] and len(nf) == 11
    assert mosaic_cfg_str(nf[6]).endswith("/prmt") and mosaic_cfg_str(nf[7]).endswith("/select")
    assert mosaic_cfg_str(nf[5]).endswith("/words") and "/words" not in mosaic_cfg_str(nf[0])  # default: words8
    shuffled = mosaic_configs(_abstract("nf4", 4096, 11008, shuffle=True), 3)  # only the lookups on relaid words
    assert shuffled[5] == M.MosaicBlocks(nf4="words") and len(shuffled) == 9
    # int8 in groups of 256: the other forms are planned at 8 bits a code, so every one fits shared memory
    w8 = _abstract("int8:group_size=256", 4096, 11008)
    assert all(M.resolve(w8, 16, c).stages >= 1 for c in mosaic_configs(w8, 3))
