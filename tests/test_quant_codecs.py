"""Codecs of the quantizer: published tables, nearest-level search, reconstruction bounds, accounting by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqf_jax import quant as Q
from hqf_jax.ops import quant_codecs as qc
from hqf_jax.ops import quant_grids as qg
from hqf_jax.ops.constants import PHI

# Typed from the QLoRA paper's appendix / bitsandbytes' hard-coded NF4 map, independent of the module constant.
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]

SPECS = [
    "int8", "int4", "int4z", "int:bits=3:symmetric=false", "nf4", "nf4dq", "nf4dq:dq_block=4", "phi5", "phi5u8",
    "phi6u8", "phi5u4", "e5u8", "phi:depth=2:dev_bits=4", "phi:depth=2:dev_kind=grid:dev_bits=4",
    "phi5u8:sort=true", "phi:depth=0:index_bits=3:ratio=1.5", "bf16", "fp32",
]


def test_nf4_table_is_the_published_one():
    assert qg.NF4_LEVELS.dtype == np.float32
    np.testing.assert_array_equal(qg.NF4_LEVELS, np.array(PUBLISHED_NF4, np.float32))
    # and it is what the QLoRA construction (asymmetric normal quantiles, exact zero) gives
    np.testing.assert_allclose(qg.nf4_from_normal_quantiles(), qg.NF4_LEVELS, atol=3e-7)


def test_dynamic_map_shape():
    d = qg.dynamic_map()
    assert d.shape == (256,) and np.all(np.diff(d) > 0)
    assert d.max() == 1.0 and 0.0 in d and d.min() > -1.0


def test_geometric_levels_are_powers_of_the_ratio():
    lv = qg.geometric_levels(PHI, 5)
    np.testing.assert_allclose(lv[:16], PHI ** -np.arange(16.0), rtol=1e-6)
    np.testing.assert_allclose(lv[16:], -lv[:16])
    np.testing.assert_allclose(qg.E_OVER_SQRT5, 2.718281828459045 / 2.23606797749979, rtol=1e-12)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 7), st.sampled_from(["phi", "e_sqrt5", 1.3]), st.integers(0, 2**31 - 1))
def test_nearest_geometric_index_is_the_argmin(bits, ratio, seed):
    r = qg.resolve_ratio(ratio)
    x = np.random.default_rng(seed).uniform(-1.2, 1.2, size=300).astype(np.float32)
    codes = np.asarray(qg.geometric_encode(jnp.asarray(x), r, bits))
    lv = qg.geometric_levels(r, bits)
    err = np.abs(x - lv[codes])
    best = np.min(np.abs(x[:, None] - lv[None, :]), axis=1)
    np.testing.assert_allclose(err, best, atol=1e-6)


def test_nearest_table_index_is_the_argmin():
    x = np.random.default_rng(0).uniform(-1, 1, size=1000).astype(np.float32)
    codes = np.asarray(qg.nearest_table_index(jnp.asarray(x), qg.NF4_LEVELS))
    np.testing.assert_allclose(np.abs(x - qg.NF4_LEVELS[codes]), np.min(np.abs(x[:, None] - qg.NF4_LEVELS), 1), atol=1e-7)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_stored_scales_round_up(dtype):
    s = jnp.asarray(np.random.default_rng(1).lognormal(-3, 2, size=500), jnp.float32)
    back = qg.load_scale(qg.store_scale(s, dtype), dtype)
    assert bool(jnp.all(back >= s))
    assert float(jnp.max(back / s - 1)) <= (2.0**-7 if dtype == "bf16" else 0.0)


@settings(max_examples=18, deadline=None)
@given(
    st.sampled_from(SPECS),
    st.integers(1, 4),
    st.sampled_from([8, 24, 64]),
    st.integers(-6, 3),
    st.integers(0, 2**31 - 1),
)
def test_reconstruction_within_codec_bound(spec, rows, cols, log_scale, seed):
    cfg = Q.parse_method(spec)
    g = getattr(cfg, "group_size", None)
    if g is not None and cols % g:
        cfg = Q.parse_method(spec + ":group_size=8")
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(4, size=(cols, rows)) * 10.0**log_scale).astype(np.float32)
    w[rng.random(w.shape) < 0.1] = 0.0  # exact zeros and all-zero groups must be fine
    q = Q.quantize(jnp.asarray(w), cfg)
    err = np.abs(np.asarray(qc.to_matrix(Q.dequantize(q) - w)))
    bound = np.asarray(Q.error_bound(q, jnp.asarray(w)))
    assert np.all(err <= bound * (1 + 1e-5) + 1e-7 * np.abs(w).max() + 1e-30), (cfg.name, float(np.max(err - bound)))


@pytest.mark.parametrize("spec", ["phi:depth=2:dev_kind=grid:dev_bits=3:sort=true", "int4z", "nf4dq"])
def test_declared_bits_match_the_encoders(spec):
    from hqf_jax.quant.qtensor import _encode, field_bits_per_element

    cfg = Q.parse_method(spec)
    _, bits = _encode(jnp.ones((3, 64)), cfg)
    assert bits == field_bits_per_element(cfg, 64)


def test_recursion_shrinks_the_bound():
    w = jax.random.normal(jax.random.key(3), (64, 32))
    b1 = Q.error_bound(Q.quantize(w, "phi:depth=1:dev_bits=4"), w)
    b2 = Q.error_bound(Q.quantize(w, "phi:depth=2:dev_bits=4"), w)
    assert float(jnp.max(b2)) < float(jnp.max(b1)) / 4


def test_sort_stores_a_permutation_and_sorts_rows():
    w = jax.random.normal(jax.random.key(4), (40, 6))
    q = Q.quantize(w, "phi5u8:sort=true:group_size=8")
    perm = np.asarray(q.codes["perm"])
    assert np.all(np.sort(perm, axis=1) == np.arange(40)[None, :])
    m = np.asarray(qc.to_matrix(w))
    assert np.all(np.diff(np.take_along_axis(m, perm.astype(int), axis=1), axis=1) >= 0)
    assert dict(q.bits)["perm"] == 6  # ceil(log2 40)


@pytest.mark.parametrize(
    "spec,shape,expected_bits",
    [
        # 4-bit codes + one bf16 scale per 64
        ("int4", (128, 32), 128 * 32 * 4 + 32 * 2 * 16),
        # asymmetric: + a 4-bit zero point per group, 64 of them fill 8 words
        ("int4z", (128, 32), 128 * 32 * 4 + 64 * 16 + 8 * 32),
        ("int8", (64, 4), 64 * 4 * 8 + 4 * 16),
        # NF4: fp32 absmax per 64
        ("nf4", (128, 32), 128 * 32 * 4 + 64 * 32),
        # NF4-DQ: 8-bit absmax codes (64 of them = 16 words) + one fp32 absmax2 per 256 + fp32 offset
        ("nf4dq", (128, 32), 128 * 32 * 4 + 16 * 32 + 32 + 32),
        # phi5+u8: 5-bit index (4-bit part + 1-bit part), 8-bit deviation, two bf16 scales per 64
        ("phi5u8", (128, 32), 128 * 32 * (5 + 8) + 2 * 64 * 16),
        # + sorted rows of 128: a 7-bit permutation entry per weight (4+2+1 parts)
        ("phi5u8:sort=true", (128, 32), 128 * 32 * (5 + 8 + 7) + 2 * 64 * 16),
        # per-row groups, 6-bit index, two 8-bit grid-coded stages
        ("phi:index_bits=6:depth=2:dev_kind=grid:group_size=None", (128, 32), 128 * 32 * 22 + 3 * 32 * 16),
        ("bf16", (10, 3), 10 * 3 * 16),
        # padding: 15 one-bit... 4-bit codes of 15 weights take 2 words
        ("int4:group_size=None", (15, 1), 2 * 32 + 32),
    ],
)
def test_accounting_by_hand(spec, shape, expected_bits):
    q = Q.quantize(jnp.ones(shape, jnp.float32), spec)
    acc = Q.accounting(q)
    assert acc["total_bits"] == expected_bits
    assert acc["bits_per_weight"] == pytest.approx(expected_bits / np.prod(shape))
    assert acc["ratio_vs_bf16"] == pytest.approx(16 / acc["bits_per_weight"])
    assert acc["ratio_vs_fp32"] == pytest.approx(32 / acc["bits_per_weight"])


def test_bad_configs_name_the_fix():
    with pytest.raises(Q.QuantConfigError, match="preset"):
        Q.parse_method("int5x")
    with pytest.raises(Q.QuantConfigError, match="key=value"):
        Q.parse_method("int4:bitz=3")
    with pytest.raises(Q.QuantConfigError, match="divisor of 100"):
        Q.quantize(jnp.ones((100, 8)), "int4")
    with pytest.raises(Q.QuantConfigError, match="dev_kind"):
        Q.parse_method("phi:dev_kind=log")
