"""The tensor-core form (pallas_kernels/quant/tc.py) and the dispatcher's ROUTES table: interpret mode on CPU
against the jnp reference (int and NF4, group scales before and after the dot, ragged batches, split-k, both
operand orders and both NF4 lookups), clear errors for what the form cannot take, Triton lowering for CUDA, and
the real kernel on a GPU (marked gpu)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hqf_jax import quant as Q
from hqf_jax.quant.linear import placeholder, prepare
from pallas_kernels.quant import BlockConfig, KernelLayoutError, choose, explain, quant_matmul
from pallas_kernels.quant import dispatch
from pallas_kernels.quant.tc import SMEM_LIMIT_BYTES, nf4_where, permute_x, tc_smem_bytes
from tests.quant_cases import check_product, quant_case


_case, _check = quant_case, check_product


TC = BlockConfig(block_n=32, block_k=128, block_b=16, mode="tc")


def _abstract(spec, k, n):
    """The PackedWeight of a (k, n) weight quantized by spec, shapes only: the routes read shapes and the config,
    never the codes (quantizing a 4096 x 11008 matrix on the CPU cost seconds per shape)."""
    return jax.eval_shape(lambda: placeholder(Q.parse_method(spec), n, k))


@pytest.mark.parametrize("spec,b,over", [
    ("int4", 8, {}),  # pre-scaled planes (group 64 < block_k 128), batch 8 padded to 16
    ("int4:group_size=128", 37, {"split_k": 2}),  # post-scaled partials, ragged batch over 3 tiles, split-k
    ("int4z:group_size=32", 20, {"swap": False}),  # zero points, x @ W^T operand order
    ("int4z:group_size=32", 24, {"cvt": "bf16"}),  # bf16 decode arithmetic (0x4300 | code), zero points
    ("nf4", 12, {"cvt": "bf16", "block_n": 16}),  # bf16 select tree
    ("nf4", 16, {"block_k": 256, "lut": "load"}),  # NF4 levels gathered from the table
    ("nf4dq:dq_block=4", 9, {"block_b": 32}),  # double-quantized absmax, NF4 select tree
    ("int8", 17, {"block_k": 64}),  # 4 codes per word: 4 planes of K = 16
    ("nf4:group_size=192", 8, {}),  # a group size that is no power of two (pre-scaled: one scale per word)
])
def test_tc_matches_reference(spec, b, over):
    k = 384 if "192" in spec else 256
    x, q = _case(spec, k, 64, b, seed=b)
    _check(quant_matmul(x, prepare(q), blocks=dataclasses.replace(TC, **over), interpret=True), x, q)


def test_nf4_select_tree_is_the_table():
    from hqf_jax.ops.quant_grids import NF4_LEVELS

    codes = jnp.arange(16, dtype=jnp.uint32)
    np.testing.assert_array_equal(np.asarray(nf4_where(codes)), np.asarray(NF4_LEVELS, np.float32))


def test_permute_x_puts_each_plane_contiguous():
    x = jnp.arange(2 * 256).reshape(2, 256)
    p = permute_x(x, 128, 8)  # tile column e * 16 + j holds column 8 j + e
    assert int(p[1, 128 + 3 * 16 + 5]) == int(x[1, 128 + 8 * 5 + 3])
    assert sorted(np.asarray(p[0]).tolist()) == np.asarray(x[0]).tolist()


def test_routes_pick_gemv_then_dot_then_tc():
    pw = _abstract("int4", 256, 64)
    modes = {b: choose(pw, b)[0].mode for b in (1, 2, 4, 5, 7, 8, 64, 300)}
    assert modes == {1: "vec", 2: "vec", 4: "vec", 5: "dot", 7: "dot", 8: "tc", 64: "tc", 300: "tc"}
    n = dispatch.ROUTES.index(dispatch.Route("int", None, "tc"))
    assert "mode=tc" in explain(pw, 8) and f"ROUTES[{n}]" in explain(pw, 8)
    assert choose(_abstract("phi5u8", 256, 64), 16)[0].mode == "dot"  # tc takes int / NF4 only: the next row
    assert choose(_abstract("int4:group_size=32", 96, 32), 16)[0].mode == "dot"  # no block_k >= 128 divides 96: the next row


def test_routes_table_is_editable_and_auto_path_matches_reference(monkeypatch, capsys):
    x, q = _case("nf4", 256, 64, 12, seed=4)
    pw = prepare(q)
    row = dispatch.Route("nf4", 16, "tc", shape=(256, 64), blocks={"block_n": 16, "block_k": 128, "lut": "load",
                                                                   "split_k": 2})
    monkeypatch.setattr(dispatch, "ROUTES", (row,) + dispatch.ROUTES)
    blocks, n = choose(pw, 12)
    assert n == 0 and (blocks.block_n, blocks.lut, blocks.split_k, blocks.mode) == (16, "load", 2, "tc")
    assert choose(pw, 17)[1] == dispatch.ROUTES.index(dispatch.Route("nf4", None, "tc"))  # past the row's bound
    monkeypatch.setenv("HQF_QUANT_DISPATCH", "print")
    _check(quant_matmul(x, pw, interpret=True), x, q)
    assert "ROUTES[0] -> mode=tc n16" in capsys.readouterr().out


def test_tc_smem_model_matches_the_h200():
    """The one measured point: int8 at block_n 128, block_k 256, block_m 64, 3 stages asked the H200 for 245760
    bytes (over its 232448); int4 at the same blocks ran. fit_smem brings the int8 blocks under the limit."""
    big = BlockConfig(block_n=128, block_k=256, block_b=64, num_stages=3, mode="tc")
    assert tc_smem_bytes(big, 8, 100) == 245760 > SMEM_LIMIT_BYTES == 232448
    assert tc_smem_bytes(big, 4, 100) <= SMEM_LIMIT_BYTES
    assert tc_smem_bytes(dataclasses.replace(big, num_stages=2), 8, 100) == 2 * 245760 // 3
    pw = _abstract("int8", 1024, 512)
    fit = dispatch.fit_smem(pw, big, 100)
    assert fit == dataclasses.replace(big, num_stages=2)  # stages first, block_k kept
    assert dispatch.fit_smem(pw, big, 100, limit=60_000).block_k < 256  # then block_k halves
    with pytest.raises(KernelLayoutError, match="shared memory"):
        dispatch.fit_smem(pw, dataclasses.replace(big, block_n=4096), 100)


@pytest.mark.parametrize("spec", ["int8", "int4", "nf4"])
def test_every_route_fits_shared_memory(spec):
    """Every ROUTES row that can take the weight, resolved at the sweep's shapes and others, asks for at most
    SMEM_LIMIT_BYTES; so does the dispatcher's choice (the int8 default used to ask for 245760)."""
    for k, n in ((1024, 512), (768, 2560), (4096, 11008), (11008, 4096)):
        pw = _abstract(spec, k, n)
        w = dispatch.tc_width(pw)
        for b in (8, 16, 64, 100, 256, 16384):
            blocks, _ = choose(pw, b)
            assert blocks.mode != "tc" or tc_smem_bytes(blocks, w, b) <= SMEM_LIMIT_BYTES, (spec, k, n, b, blocks)
            for row in dispatch.ROUTES:
                if row.form == "tc" and row.method in ("*", pw.cfg.method):
                    blocks = dispatch.route_blocks(pw, b, row)
                    assert tc_smem_bytes(blocks, w, b) <= SMEM_LIMIT_BYTES, (row, spec, k, n, b, blocks)


def test_tc_refuses_what_it_cannot_run():
    x, q = _case("int4", 256, 64, 8)
    pw = prepare(q)
    with pytest.raises(KernelLayoutError, match="multiple of 128"):
        quant_matmul(x, pw, blocks=dataclasses.replace(TC, block_k=64), interpret=True)
    with pytest.raises(KernelLayoutError, match="power of two >= 16"):
        quant_matmul(x, pw, blocks=dataclasses.replace(TC, block_b=24), interpret=True)
    with pytest.raises(KernelLayoutError, match="8-bit codes"):
        quant_matmul(x, prepare(_case("int8", 256, 64, 8)[1]), blocks=dataclasses.replace(TC, cvt="bf16"),
                     interpret=True)
    with pytest.raises(KernelLayoutError, match="lut"):
        quant_matmul(x, pw, blocks=dataclasses.replace(TC, lut="shuffle"), interpret=True)
    with pytest.raises(KernelLayoutError, match="must divide the 64 output"):
        quant_matmul(x, pw, blocks=dataclasses.replace(TC, block_n=128), interpret=True)
    with pytest.raises(KernelLayoutError, match="features"):
        quant_matmul(x[:, :128], pw, blocks=TC, interpret=True)
    with pytest.raises(KernelLayoutError, match="flatten"):
        quant_matmul(x[None], pw, interpret=True)
    with pytest.raises(KernelLayoutError, match="batch 0"):
        quant_matmul(x[:0], pw, interpret=True)
    _, qp = _case("phi5u8", 256, 64, 1)
    with pytest.raises(KernelLayoutError, match="int and NF4"):
        quant_matmul(x, prepare(qp), blocks=TC, interpret=True)


@pytest.mark.parametrize("spec", ["int4", "nf4dq", "int4z:group_size=128"])
def test_tc_lowers_to_triton_for_cuda(spec):
    x, q = _case(spec, 512, 256, 16)
    pw = prepare(q)
    for over in ({}, {"swap": False, "block_k": 256, "split_k": 2}, {"lut": "load", "block_n": 128, "block_b": 64},
                 {"cvt": "bf16"}):
        blocks = dataclasses.replace(TC, **over)
        jax.jit(lambda x, pw: quant_matmul(x, pw, blocks=blocks)).trace(x, pw).lower(lowering_platforms=("cuda",))


GPU_OVERS = [{}, {"swap": False, "lut": "load"}, {"block_n": 128, "block_k": 256, "split_k": 2, "num_warps": 8},
             {"cvt": "bf16"}]
# cvt='bf16' takes codes of at most 4 bits (int8 with it is refused: test_tc_refuses_what_it_cannot_run)
GPU_CASES = [(spec, over) for spec in ["int4", "int4z:group_size=128", "nf4", "nf4dq", "int8"] for over in GPU_OVERS
             if not (spec == "int8" and over.get("cvt") == "bf16")]


@pytest.mark.gpu
@pytest.mark.parametrize("spec,over", GPU_CASES)
@pytest.mark.parametrize("b", [8, 16, 100])
def test_tc_on_gpu(spec, b, over):
    x, q = _case(spec, 1024, 512, b)
    _check(quant_matmul(x, prepare(q), blocks=dataclasses.replace(TC, **over)), x, q)
    _check(quant_matmul(x, prepare(q)), x, q)  # the dispatcher's choice


def test_model_layers_reach_the_tc_form_through_qlinear(monkeypatch, capsys):
    """The path of `--quant int4` generation (QuantLinear -> qlinear(impl="pallas") -> quant_matmul without blocks):
    8 rows (batch 2 x 4 positions) go to the tensor-core form and match the reference impl."""
    from hqf_jax.quant.linear import prepare_for, qlinear

    x, q = _case("int4", 128, 32, 8, seed=9)
    monkeypatch.setenv("HQF_QUANT_DISPATCH", "print")
    y = qlinear(x.reshape(2, 4, 128), prepare_for(q, "pallas"), "pallas", interpret=True)
    assert "mode=tc" in capsys.readouterr().out
    _check(y.reshape(8, 32), x, q)
