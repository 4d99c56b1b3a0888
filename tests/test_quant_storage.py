"""Packing, storage and tree-level API of the quantizer: exact round trips, bytes on disk == accounting."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqf_jax import quant as Q
from hqf_jax.ops import quant_pack as qp
from hqf_jax.quant.storage import QuantStorageError, data_bytes


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 32), st.integers(1, 3), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_pack_round_trip_exact(bits, rows, cols, seed):
    codes = np.random.default_rng(seed).integers(0, 2**bits, size=(rows, cols), dtype=np.uint64).astype(np.uint32)
    parts = qp.pack_field(jnp.asarray(codes), bits)
    assert all(p.dtype == jnp.uint32 for p in parts)
    np.testing.assert_array_equal(np.asarray(qp.unpack_field(parts, bits, codes.shape)), codes)
    assert sum(int(p.size) * 32 for p in parts) == qp.packed_bits(codes.size, bits)
    # no word beyond the codes' bits: the waste is below one word per power-of-two part
    assert qp.packed_bits(codes.size, bits) - codes.size * bits < 32 * len(qp.split_widths(bits))


def test_pack_layout_by_hand():
    # 5-bit codes split into a 4-bit part (8 per word) and a 1-bit part (32 per word)
    codes = jnp.arange(8, dtype=jnp.uint32) + 16 * (jnp.arange(8) % 2).astype(jnp.uint32)
    low, high = qp.pack_field(codes, 5)
    assert int(low[0]) == sum(i << (4 * i) for i in range(8))
    assert int(high[0]) == sum(1 << i for i in range(8) if i % 2)
    # an 8-bit part is plain byte order on a little-endian machine
    b = np.asarray(qp.pack_field(jnp.arange(8, dtype=jnp.uint32), 8)[0]).view(np.uint8)
    np.testing.assert_array_equal(b, np.arange(8))


@pytest.mark.parametrize("spec", ["int4z", "nf4dq", "phi5u8:sort=true", "phi:depth=2:dev_kind=grid:dev_bits=3"])
def test_qtensor_pack_unpack_exact(spec):
    w = jax.random.normal(jax.random.key(0), (64, 24)) * 0.05
    q = Q.quantize(w, spec)
    from hqf_jax.quant.qtensor import manifest_entry

    q2 = Q.unpack(Q.pack(q), manifest_entry(q))
    for k in q.codes:
        np.testing.assert_array_equal(np.asarray(q.codes[k]), np.asarray(q2.codes[k]))
    np.testing.assert_array_equal(np.asarray(Q.dequantize(q)), np.asarray(Q.dequantize(q2)))


def _params():
    k = jax.random.split(jax.random.key(1), 4)
    return {
        "l1": {"kernel": jax.random.normal(k[0], (64, 64)) / 8.0, "bias": jnp.zeros((64,))},
        "l2": {"kernel": jax.random.normal(k[1], (64, 16)) / 8.0, "bias": 0.1 * jnp.ones((16,))},
        "table": jax.random.normal(k[2], (10, 64)).astype(jnp.bfloat16),  # 10 columns in the matrix view: kept
        "blocks": {0: {"w": jax.random.normal(k[3], (2, 64, 8))}},  # int keys, 3-D leaf
    }


def _apply(p, x):
    h = jax.nn.gelu(x @ p["l1"]["kernel"] + p["l1"]["bias"])
    return h @ p["l2"]["kernel"] + p["l2"]["bias"]


@pytest.mark.parametrize("spec", ["bf16", "int8", "int4", "int4z", "nf4", "nf4dq", "phi5", "phi5u8", "phi5u8:sort=true"])
def test_file_size_equals_accounting(tmp_path, spec):
    qtree = Q.quantize_tree(_params(), None, spec)
    acc = Q.tree_accounting(qtree)
    grouped = getattr(Q.parse_method(spec), "group_size", None) is not None
    assert acc["kept"] == ["l1/bias", "l2/bias"] + (["table"] if grouped else [])
    Q.save_quantized(str(tmp_path), qtree)
    assert data_bytes(os.path.join(tmp_path, "weights.safetensors")) == acc["total_bytes"]
    loaded = Q.load_quantized(str(tmp_path))
    a, b = Q.restore_tree(qtree), Q.restore_tree(loaded)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_tree_accounting_by_hand():
    qtree = Q.quantize_tree(_params(), None, "int4")
    acc = Q.tree_accounting(qtree)
    quantized = 64 * 64 + 64 * 16 + 2 * 64 * 8
    assert acc["quantized_numel"] == quantized
    assert acc["quantized_bits_per_weight"] == pytest.approx(4.25)
    kept_bits = 64 * 32 + 16 * 32 + 640 * 16
    assert acc["total_bytes"] * 8 == quantized * 4.25 + kept_bits


# Relative output error allowed after quantize -> restore, per method (stated tolerance of the tree API).
TOLERANCE = {"bf16": 0.01, "int8": 0.02, "phi5u8": 0.005, "int4": 0.25, "nf4": 0.25, "phi5": 0.3}


@pytest.mark.parametrize("spec", sorted(TOLERANCE))
def test_restored_model_output_within_tolerance(spec):
    p = _params()
    x = jax.random.normal(jax.random.key(9), (8, 64))
    y = _apply(p, x)
    restored = Q.restore_tree(Q.quantize_tree(p, None, spec))
    rel = float(jnp.linalg.norm(_apply(restored, x) - y) / jnp.linalg.norm(y))
    assert rel < TOLERANCE[spec], rel
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(p)


def test_rules_choose_leaves_and_configs():
    def rule(path, leaf):
        if path == "l1/kernel":
            return "nf4"
        return path.startswith("l2") and leaf.ndim == 2

    qtree = Q.quantize_tree(_params(), rule, "int8")
    assert qtree["l1"]["kernel"].cfg.name == "nf4/g64"
    assert qtree["l2"]["kernel"].cfg.name == "int8/g64"
    assert not isinstance(qtree["blocks"][0]["w"], Q.QTensor)
    with pytest.raises(Q.QuantConfigError, match="divisor"):
        Q.quantize_tree(_params(), lambda p, x: x.ndim >= 2, "int4", strict=True)


def test_missing_folder_names_the_file(tmp_path):
    with pytest.raises(QuantStorageError, match="manifest.json|weights.safetensors"):
        Q.load_quantized(str(tmp_path))
