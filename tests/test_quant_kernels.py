"""Pallas quantized matmul kernels against their jnp references: interpret mode on CPU (hypothesis over small
shapes and block configs), Triton lowering for CUDA checked on CPU, and the real kernels on a GPU (marked gpu)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqf_jax import quant as Q
from hqf_jax.ops.quant_matmul import dequant_matmul_ref, gather_matmul_ref
from hqf_jax.quant.linear import prepare
from hqf_jax.quant.qtensor import dequantize_matrix, phi_stages
from pallas_kernels.quant import (BlockConfig, GatherBlockConfig, KernelLayoutError, choose, gather_matmul,
                                  quant_matmul)

KERNEL_SPECS = [
    "phi5u8", "phi6u8:group_size=32", "e5u8:group_size=None", "phi:depth=2:dev_kind=grid:dev_bits=4:group_size=32",
    "phi5u4:scale_dtype=fp32", "int4", "int4z:group_size=32", "int8", "nf4", "nf4dq:dq_block=4",
]


def _case(spec, k, n, b, seed):
    kw, kx = jax.random.split(jax.random.key(seed))
    w = jax.random.normal(kw, (k, n)) * 0.05
    x = jax.random.normal(kx, (b, k)).astype(jnp.bfloat16)
    q = Q.quantize(w, spec)
    return x, q


def _check(y, ref, x, wm):
    """|y - ref| within bf16 rounding of the weights (1 ulp where exp2 and the table differ) and of the output."""
    y = np.asarray(y, np.float32)
    ref = np.asarray(ref, np.float32)
    scale = np.abs(np.asarray(x, np.float32)) @ np.abs(np.asarray(wm, np.float32)).T
    assert y.shape == ref.shape
    assert np.all(np.abs(y - ref) <= 2.0**-7 * (scale + np.abs(ref)) + 1e-6), float(np.max(np.abs(y - ref)))


@settings(max_examples=6, deadline=None)
@given(
    st.sampled_from(KERNEL_SPECS),
    st.sampled_from([64, 128]),
    st.sampled_from([16, 48]),
    st.sampled_from([1, 5, 20]),
    st.sampled_from([(16, 32, 1), (16, 64, 2), (16, 32, 2)]),
    st.sampled_from([("auto", "exp2"), ("dot", "table"), ("fma", "table"), ("fma", "exp2"), ("vec", "exp2"),
                     ("vec", "table")]),
    st.integers(0, 1000),
)
def test_quant_matmul_matches_reference_interpret(spec, k, n, b, blk, variant, seed):
    x, q = _case(spec, k, n, b, seed)
    g = q.cfg.group_size or k
    bn, bk, split = blk
    if g % bk and bk % g:
        bk = 32
    if k % (bk * split):
        split = 1
    blocks = BlockConfig(block_n=bn, block_k=bk, split_k=split, mode=variant[0], levels=variant[1])
    y = quant_matmul(x, prepare(q), blocks=blocks, interpret=True)
    wm = dequantize_matrix(q)
    _check(y, dequant_matmul_ref(x, wm), x, wm)


@pytest.mark.parametrize("spec", ["phi5u8", "nf4dq", "int4z"])
def test_quant_matmul_default_blocks_and_batch_blocks(spec):
    x, q = _case(spec, 128, 32, 40, 0)  # batch 40 -> padded to 64, two batch blocks of 32
    wm = dequantize_matrix(q)
    y = quant_matmul(x, prepare(q), blocks=BlockConfig(block_n=16, block_k=64, block_b=32), interpret=True)
    _check(y, dequant_matmul_ref(x, wm), x, wm)


VEC_CASES = ((1, 1, "exp2", "slot"), (5, 2, "table", "slot"), (3, 1, "exp2", "step"), (2, 2, "table", "tile"))


@pytest.mark.parametrize("i, spec", list(enumerate(KERNEL_SPECS)))
def test_vec_mode_every_spec(i, spec):
    """The GEMV form (no reshapes, exponent-trick conversion, per-group scales) on every spec, block_n below the
    tensor-core minimum of 16. Each spec takes two adjacent cases of VEC_CASES in turn (one exp2 and one table
    level form, split-k on and off across them), so every case runs on several specs and every spec on two
    cases: each interpret-mode compile costs seconds on the CPU, the full 10 x 4 product ran 40 of them."""
    for b, split, levels, acc in (VEC_CASES[i % 4], VEC_CASES[(i + 1) % 4]):
        x, q = _case(spec, 256, 32, b, 3)
        wm = dequantize_matrix(q)
        blocks = BlockConfig(block_n=8, block_k=64, split_k=split, mode="vec", levels=levels, acc=acc)
        _check(quant_matmul(x, prepare(q), blocks=blocks, interpret=True), dequant_matmul_ref(x, wm), x, wm)


def test_vec_mode_refuses_layouts_it_cannot_tile():
    x, q = _case("phi5u8:group_size=16", 64, 16, 1, 0)  # 1-bit index part: 32 codes per word > 16 per group
    with pytest.raises(KernelLayoutError, match="mode='fma'"):
        quant_matmul(x, prepare(q), blocks=BlockConfig(block_n=16, block_k=32, mode="vec"), interpret=True)
    wm = dequantize_matrix(q)  # auto falls back to the fma form
    y = quant_matmul(x, prepare(q), blocks=BlockConfig(block_n=16, block_k=32), interpret=True)
    _check(y, dequant_matmul_ref(x, wm), x, wm)
    with pytest.raises(KernelLayoutError, match="at most 8"):
        quant_matmul(jnp.ones((16, 64), jnp.bfloat16), prepare(_case("int4", 64, 16, 1, 0)[1]),
                     blocks=BlockConfig(block_n=16, block_k=64, block_b=16, mode="vec"), interpret=True)
    with pytest.raises(KernelLayoutError, match="acc"):
        quant_matmul(x, prepare(q), blocks=BlockConfig(mode="fma", acc="rows"), interpret=True)


def test_vec_mode_batch_blocks_and_padding():
    """More rows than one program takes (block_b 2 of batch 3: padded) and batch 12 in programs of 8 rows; auto
    with block_b > 8 at batch 1 falls back to fma instead of failing."""
    for b, bb in ((3, 2), (12, None)):
        x, q = _case("phi5u8", 128, 32, b, 7)
        wm = dequantize_matrix(q)
        y = quant_matmul(x, prepare(q), blocks=BlockConfig(block_n=4, block_k=64, block_b=bb, mode="vec"),
                         interpret=True)
        _check(y, dequant_matmul_ref(x, wm), x, wm)
    x, q = _case("int4", 128, 32, 1, 7)
    wm = dequantize_matrix(q)
    _check(quant_matmul(x, prepare(q), blocks=BlockConfig(block_n=16, block_b=16), interpret=True),
           dequant_matmul_ref(x, wm), x, wm)


@pytest.mark.parametrize("spec,k", [("int4:group_size=192", 384), ("nf4dq:group_size=192", 384),
                                    ("int4:group_size=None", 96), ("phi5u8", 64)])
def test_default_blocks_fit_any_group(spec, k):
    """quant_matmul with no blocks picks a config that fits the group size (non-power-of-two groups too), at batch
    1, 2 and 5. Each distinct config runs once, at the largest of those batches that picks it (batch 1 takes the GEMV
    blocks of batch 2 on every spec here): an interpret-mode compile costs seconds on the CPU."""
    ran = []
    for b in (5, 2, 1):
        x, q = _case(spec, k, 16, b, 2)
        pw = prepare(q)
        blocks = choose(pw, b)[0]
        if blocks in ran:
            continue
        ran.append(blocks)
        wm = dequantize_matrix(q)
        _check(quant_matmul(x, pw, interpret=True), dequant_matmul_ref(x, wm), x, wm)


def test_auto_mode_follows_the_forms_table():
    """mode="auto" (dispatch.AUTO_FORMS): GEMV at batch <= 2 when its layout fits and block_b <= 8, else fma;
    tl.dot above batch 2. Explicit modes are kept."""
    auto = BlockConfig()
    assert [auto.resolved_mode(b, vec_ok=True) for b in (1, 2, 3, 64)] == ["vec", "vec", "dot", "dot"]
    assert auto.resolved_mode(1, vec_ok=False) == "fma"
    assert BlockConfig(block_b=16).resolved_mode(2, vec_ok=True) == "fma"
    assert BlockConfig(mode="fma").resolved_mode(64, vec_ok=True) == "fma"


def test_sorted_weights_are_refused_by_the_fused_kernel():
    x, q = _case("phi5u8:sort=true:group_size=32", 64, 16, 1, 0)
    with pytest.raises(KernelLayoutError, match="gather_matmul"):
        quant_matmul(x, prepare(q), interpret=True)


@settings(max_examples=3, deadline=None)
@given(st.sampled_from(["phi5u8:sort=true:group_size=32", "phi:index_bits=6:depth=0:sort=true:group_size=None",
                        "e5u8:sort=true:dev_bits=4:scale_dtype=fp32"]),
       st.sampled_from([64, 128]), st.sampled_from([1, 6]), st.integers(0, 1000))
def test_gather_matmul_matches_reference_interpret(spec, k, b, seed):
    x, q = _case(spec, k, 32, b, seed)
    s_sorted = phi_stages(q)
    s_sorted = sum(s_sorted[1:], s_sorted[0])
    y = gather_matmul(x, prepare(q), blocks=GatherBlockConfig(split_k=2, levels="table" if b > 1 else "exp2"),
                      interpret=True)
    ref = gather_matmul_ref(x, s_sorted, q.codes["perm"])
    _check(y, ref, x, s_sorted)
    # and the sorted form keeps the function of the unsorted weight
    wm = dequantize_matrix(q)
    _check(ref, dequant_matmul_ref(x, wm), x, wm)


def test_layout_errors_name_the_fix():
    x, q = _case("int4", 64, 16, 2, 0)
    with pytest.raises(KernelLayoutError, match="row-sorted"):
        gather_matmul(x, prepare(q), interpret=True)
    with pytest.raises(KernelLayoutError, match="mode"):
        quant_matmul(x, prepare(q), blocks=BlockConfig(mode="wmma"), interpret=True)
    with pytest.raises(KernelLayoutError, match="block_n"):
        quant_matmul(x, prepare(q), blocks=BlockConfig(block_n=24), interpret=True)
    with pytest.raises(KernelLayoutError, match="multiple of 32"):
        prepare(Q.quantize(jnp.ones((40, 16)), "int4:group_size=8"))
    with pytest.raises(KernelLayoutError, match="bf16 XLA"):
        prepare(Q.quantize(jnp.ones((64, 16)), "bf16"))


@pytest.mark.parametrize("spec", ["phi5u8", "phi:depth=2:dev_kind=grid:dev_bits=4", "int4z", "nf4dq"])
def test_kernels_lower_to_triton_for_cuda(spec):
    """The Pallas -> Triton IR lowering runs on CPU: it catches unsupported ops and non-power-of-two shapes."""
    x, q = _case(spec, 256, 64, 1, 0)
    pw = prepare(q)
    for blocks in (BlockConfig(mode="fma", levels="table"), BlockConfig(mode="dot", levels="exp2"),
                   BlockConfig(block_n=8, block_k=256, mode="vec", levels="exp2")):
        jax.jit(lambda x, pw: quant_matmul(x, pw, blocks=blocks)).trace(x, pw).lower(lowering_platforms=("cuda",))
    if spec.startswith("phi"):
        qs = Q.quantize(jax.random.normal(jax.random.key(1), (256, 64)), spec + ":sort=true")
        jax.jit(lambda x, pw: gather_matmul(x, pw)).trace(x, prepare(qs)).lower(lowering_platforms=("cuda",))


@pytest.mark.gpu
@pytest.mark.parametrize("spec", KERNEL_SPECS)
@pytest.mark.parametrize("b", [1, 16, 100])
@pytest.mark.parametrize("mode,levels", [("auto", "exp2"), ("dot", "table"), ("fma", "table"), ("vec", "exp2"),
                                         ("vec", "table")])
def test_quant_matmul_on_gpu(spec, b, mode, levels):
    x, q = _case(spec, 512, 256, b, 0)
    wm = dequantize_matrix(q)
    blocks = BlockConfig(block_n=32, block_k=128, split_k=2, mode=mode, levels=levels)
    _check(quant_matmul(x, prepare(q), blocks=blocks), dequant_matmul_ref(x, wm), x, wm)


@pytest.mark.gpu
@pytest.mark.parametrize("b", [1, 16])
def test_gather_matmul_on_gpu(b):
    x, q = _case("phi5u8:sort=true", 512, 256, b, 0)
    wm = dequantize_matrix(q)
    _check(gather_matmul(x, prepare(q)), dequant_matmul_ref(x, wm), x, wm)


def test_qlinear_impls_agree_with_leading_dims():
    from hqf_jax.quant.linear import prepare_for, qlinear

    w = jax.random.normal(jax.random.key(5), (64, 32)) * 0.1
    x = jax.random.normal(jax.random.key(6), (2, 3, 64)).astype(jnp.bfloat16)
    q = Q.quantize(w, "phi5u8")
    y_ref = qlinear(x, prepare_for(q, "reference"), "reference")
    y_pal = qlinear(x, prepare_for(q, "pallas"), "pallas", interpret=True,
                    blocks=BlockConfig(block_n=16, block_k=64, split_k=1))
    assert y_ref.shape == y_pal.shape == (2, 3, 32) and y_ref.dtype == jnp.bfloat16
    wm = dequantize_matrix(q)
    _check(y_pal.reshape(6, 32), y_ref.reshape(6, 32), x.reshape(6, 64), wm)
    # and the reference equals x @ dequantized kernel
    np.testing.assert_allclose(np.asarray(y_ref, np.float32), np.asarray(x.astype(jnp.float32) @ Q.dequantize(q)),
                               rtol=0.02, atol=0.02)
    with pytest.raises(Q.QuantConfigError, match="impl"):
        prepare_for(q, "cuda")
