"""Statistics of the phi-grid analysis (hand-computed values, negative and positive controls) and the
quality-vs-bits evaluation on an in-file model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from studies import quant_analysis as qa
from eval import quant_eval as qe
from hqf_jax.ops import quant_stats as qs
from hqf_jax.ops.constants import PHI


def test_phi_bands_by_hand():
    a = np.array([1.0, 0.7, 1 / PHI, 0.5, PHI**-3 * 1.01, 0.0, 1e-9])
    np.testing.assert_array_equal(qs.phi_bands(a, PHI, 8), [0, 0, 1, 1, 2, 7, 7])


def test_uniform_grid_error_bound_and_levels():
    m = np.random.default_rng(0).normal(size=(4, 64))
    err = qs.uniform_grid_error(m, 16, 32)
    s = np.repeat(np.abs(m.reshape(4, 4, 16)).max(-1), 16, axis=1)
    assert np.all(np.abs(err) <= s / 31 + 1e-12)
    assert np.unique(np.round((m - err) / s, 9)).size <= 32


def test_chi_square_and_merging():
    obs = np.array([50.0, 30.0, 15.0, 4.0, 1.0])
    r = qs.chi_square(obs, obs / obs.sum())
    assert r["chi2"] == pytest.approx(0.0) and r["p_value"] == pytest.approx(1.0)
    o, e = qs.merge_small_bins(obs, obs)
    np.testing.assert_array_equal(o, [50, 30, 15, 5])
    np.testing.assert_array_equal(e, [50, 30, 15, 5])
    o, e = qs.merge_small_bins(np.array([2.0, 50.0, 30.0, 1.0]), np.array([2.0, 50.0, 30.0, 1.0]))
    np.testing.assert_array_equal(o, [52, 31])
    r = qs.chi_square(np.array([100.0, 0.0]), np.array([0.5, 0.5]))
    assert r["chi2"] == pytest.approx(100.0) and r["p_value"] < 1e-20 and r["total_variation"] == pytest.approx(0.5)


def test_near_level_fraction():
    levels = PHI ** -np.arange(10.0)
    assert qs.near_level_fraction(levels, PHI, 0.05) == 1.0
    loguni = PHI ** -np.random.default_rng(1).uniform(0, 10, 200_000)
    assert qs.near_level_fraction(loguni, PHI, 0.075) == pytest.approx(0.15, abs=0.005)
    assert qs.sqnr_db(1.0, 0.0) == float("inf") and qs.sqnr_db(100.0, 1.0) == pytest.approx(20.0)


def _gaussian_mats(seed=0):
    rng = np.random.default_rng(seed)
    return {"a": rng.normal(size=(64, 128)).astype(np.float32) * 0.1,
            "b": (rng.normal(size=(32, 64)) * rng.uniform(0.5, 2, size=(32, 1))).astype(np.float32)}


def test_band_statistics_negative_control():
    """Gaussian weights are the null itself: no test may fire."""
    r = qa.band_statistics(_gaussian_mats(), n_null=5, seed=3)
    assert r["count_test_vs_gaussian"]["p_value"] > 1e-3
    assert r["error_share_p_value"] > 0.1
    assert abs(r["near_level"]["z"]) < 4
    assert sum(r["count_share"]) == pytest.approx(1.0) and sum(r["error_share"]) == pytest.approx(1.0)


def test_band_statistics_positive_control():
    """Weights planted on the phi levels (0.5% jitter) must show the clustering the notes claim."""
    rng = np.random.default_rng(0)
    k = rng.integers(0, 8, size=(64, 128))
    m = (PHI ** -k.astype(float) * rng.choice([-1, 1], size=k.shape) * (1 + 0.005 * rng.normal(size=k.shape)))
    m[:, ::64] = 1.0  # each group absmax is exactly 1 (exact in bf16): the levels line up with s * phi^-k
    r = qa.band_statistics({"planted": m.astype(np.float32)}, n_null=3)
    assert r["near_level"]["observed"] > 0.9 and r["near_level"]["z"] > 50
    assert r["count_test_vs_gaussian"]["p_value"] < 1e-10


def test_energy_split_and_recursion_monotone():
    mats = _gaussian_mats()
    split = qa.energy_split(mats, specs=("phi5u8",))[0]
    assert split["stage_energy_share"][0] > 0.9 and split["error_energy_share"] < 1e-5
    rows = {r["spec"]: r for r in qa.recursion_table(mats, ["phi5", "phi5u8", "phi:depth=2:dev_bits=8", "int4"])}
    assert rows["phi5"]["sqnr_db"] < rows["phi5u8"]["sqnr_db"] < rows["phi:depth=2:dev_bits=8"]["sqnr_db"]
    assert rows["phi5u8"]["bits_per_weight"] == pytest.approx(13.5)


def test_continuation_agreement_by_hand():
    ref = np.array([[1, 2, 3, 4], [1, 2, 3, 4]])
    out = np.array([[1, 2, 3, 4], [1, 9, 3, 4]])
    assert qe.continuation_agreement(ref, out) == (0.5, pytest.approx((1.0 + 0.25) / 2))


def test_evaluate_methods_on_an_in_file_model():
    k = jax.random.split(jax.random.key(0), 3)
    params = {"l1": {"kernel": jax.random.normal(k[0], (64, 128)) / 8, "bias": jnp.zeros(128)},
              "l2": {"kernel": jax.random.normal(k[1], (128, 10)) / 11}}
    x = jax.random.normal(k[2], (256, 64))

    def apply(p):
        return jax.nn.relu(x @ p["l1"]["kernel"] + p["l1"]["bias"]) @ p["l2"]["kernel"]

    target = apply(params)
    rows = qe.evaluate_methods(params, ["int8", "phi5u8", "int:bits=3:group_size=32"],
                               loss_fn=lambda p: float(jnp.mean((apply(p) - target) ** 2)),
                               generate_fn=lambda p: np.asarray(jnp.argmax(apply(p), -1)).reshape(16, 16))
    assert [r["method"] for r in rows] == ["reference (unquantized)", "int8/g64", "phi5+u8/g64", "int3/g32"]
    assert rows[0]["delta_loss"] == 0.0
    assert rows[2]["delta_loss"] < rows[1]["delta_loss"] < rows[3]["delta_loss"]
    assert rows[1]["quantized_bits_per_weight"] == pytest.approx(8.25)
    assert rows[1]["kept"] == ["l1/bias"]  # l2/kernel: 10 rows of 128 columns, group 64 fits


def test_lm_adapter_round_trip_and_quantized_byte_lm():
    from flax import nnx

    from hqf_jax import quant as Q
    from hqf_jax.quant import lm_adapter

    fwd = nnx.jit(lambda m, t: m(t))  # jitted: eager calls pay one XLA compile per primitive and shape

    model, _ = lm_adapter.random_model("configs/lm_tiny.py", seed=0)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(2, 16)), jnp.int32)
    params = lm_adapter.params_of(model)
    np.testing.assert_array_equal(np.asarray(fwd(lm_adapter.with_params(model, params), tokens)),
                                  np.asarray(fwd(model, tokens)))
    qtree = Q.quantize_tree(params, None, "phi5u8")
    assert Q.tree_accounting(qtree)["quantized_numel"] > 0.8 * sum(x.size for x in jax.tree_util.tree_leaves(params))
    y = fwd(model, tokens)

    def dev(tree):  # logit change; this random-init model is sensitive (1e-4 relative noise moves logits ~0.07)
        return float(jnp.sqrt(jnp.mean((fwd(lm_adapter.with_params(model, Q.restore_tree(tree)), tokens) - y) ** 2)))

    # phi5+u8 (13.5 bits, weight SQNR ~60 dB) must disturb the model less than a plain bf16 cast (~56 dB)
    assert dev(qtree) < dev(Q.quantize_tree(params, None, "bf16"))
    gen = lm_adapter.make_greedy_fn(model, [b"def f(x):", b"import os\n"], 4)(params)
    assert gen.shape == (2, 4)
