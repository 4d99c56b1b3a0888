"""Holographic memory: episodic cache, tower routing, prototypes, store/retrieve, orbax round trip."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hqf_jax.holo import episodic, tower
from hqf_jax.holo import memory as hm
from hqf_jax.holo.checkpoint import HoloCheckpointError, restore_memory, save_memory
from hqf_jax.holo.hashing import hash_rows
from hqf_jax.holo.prototypes import top_k_per_bucket
from hqf_jax.ops import clifford, so4

# jitted: one compile per shape, not one per primitive and shape in eager mode
route = jax.jit(tower.route, static_argnums=1)
aggregate_levels = jax.jit(tower.aggregate_levels, static_argnums=1)

# ---------------------------------------------------------------- episodic cache
def test_episodic_exact_recall_last_write_wins():
    rng = np.random.default_rng(0)
    ctx = rng.integers(0, 6, (1200, 3))  # 216 distinct contexts: many duplicates within and across batches
    tgt = rng.integers(0, 50, 1200)
    cache = episodic.episodic_init(1 << 10, 3)
    ref = {}
    for i in range(0, 1200, 300):
        cache = episodic.episodic_insert(cache, jnp.asarray(ctx[i : i + 300]), jnp.asarray(tgt[i : i + 300]))
        for c, t in zip(map(tuple, ctx[i : i + 300]), tgt[i : i + 300]):
            ref[c] = t
    assert int(cache.size) == len(ref) and int(cache.dropped) == 0
    keys = np.array(list(ref))
    found, val = episodic.episodic_lookup(cache, jnp.asarray(keys))
    assert bool(found.all())
    np.testing.assert_array_equal(np.asarray(val), np.array([ref[tuple(k)] for k in keys]))
    found, val = episodic.episodic_lookup(cache, jnp.asarray(rng.integers(6, 9, (64, 3))))
    assert not bool(found.any()) and (np.asarray(val) == episodic.EMPTY).all()


def test_episodic_valid_mask_and_overflow_counted():
    cache = episodic.episodic_init(8, 2)
    ctx = jnp.stack([jnp.arange(12), jnp.arange(12) + 100], axis=1)
    valid = jnp.arange(12) != 3
    cache = episodic.episodic_insert(cache, ctx, jnp.arange(12), valid, max_probes=8)
    assert int(cache.size) == 8 and int(cache.dropped) == 3  # 11 valid items, 8 slots
    found, _ = episodic.episodic_lookup(cache, ctx[3:4])
    assert not bool(found[0])


def test_episodic_capacity_error():
    with pytest.raises(episodic.CacheConfigError, match="power of two"):
        episodic.episodic_init(1000, 4)


def test_hash_is_order_sensitive_and_deterministic():
    a = jnp.array([[1, 2, 3], [3, 2, 1]])
    h = np.asarray(hash_rows(a))
    assert h[0] != h[1]
    np.testing.assert_array_equal(h, np.asarray(hash_rows(a)))
    assert np.asarray(hash_rows(a, seed=1))[0] != h[0]


# ---------------------------------------------------------------- tower
def test_route_prefix_structure_and_aggregation():
    mv = jax.jit(lambda k: clifford.from_matrix(so4.haar_so4_raw(k, (500,))))(jax.random.key(0))
    leaf = np.asarray(route(mv, 3))
    assert leaf.min() >= 0 and leaf.max() < 16**3
    np.testing.assert_array_equal(leaf, np.asarray(route(mv, 3)))  # deterministic
    assert len(np.unique(leaf)) > 350  # random contexts spread over the leaves
    # a tiny perturbation (far below every resolution) keeps the coarse digits
    near = np.asarray(route(mv + 1e-7, 3))
    assert (near >> 8 == leaf >> 8).mean() > 0.95
    leaves = jax.random.normal(jax.random.key(1), (16**2, 4, 4))
    agg = aggregate_levels(leaves, 2)
    assert agg.shape[0] == tower.tower_size(2) == 1 + 16 + 256
    np.testing.assert_allclose(np.asarray(agg[0]), np.asarray(leaves.sum(0)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(agg[1 + 5]), np.asarray(leaves[5 * 16 : 6 * 16].sum(0)), rtol=1e-5, atol=1e-5)


def test_prototypes_match_python_counts():
    rng = np.random.default_rng(3)
    b, t = rng.integers(0, 5, 400), rng.integers(0, 12, 400)
    valid = rng.random(400) < 0.9
    pt, pc = top_k_per_bucket(jnp.asarray(b), jnp.asarray(t), jnp.asarray(valid), 6, 12, 3)
    for bucket in range(6):
        cnt = collections.Counter(t[(b == bucket) & valid].tolist())
        want = sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        got = [(int(x), int(c)) for x, c in zip(np.asarray(pt[bucket]), np.asarray(pc[bucket])) if x >= 0]
        assert got == want


# ---------------------------------------------------------------- memory
def _pairs(n, vocab, length, seed):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, vocab, (n, length)), jnp.int32), jnp.asarray(rng.integers(0, vocab, n), jnp.int32)


def test_single_pair_unbinding_exact_any_length():
    for length in (1, 8, 64):
        cfg = hm.HoloConfig(vocab_size=64, context_len=length, levels=0, cache_capacity=0, proto_k=0)
        state = hm.init_memory(cfg)
        ctx, tgt = _pairs(1, 64, length, length)
        state = hm.store(state, ctx, tgt, config=cfg)
        out = hm.retrieve(state, ctx, config=cfg)
        assert int(jnp.argmax(out["scores"][0])) == int(tgt[0])
        np.testing.assert_allclose(float(out["scores"][0, tgt[0]]), 1.0, atol=1e-4)  # cosine of T with itself


def test_episodic_cache_gives_exact_recall_where_tower_saturates():
    vocab = 128
    ctx, tgt = _pairs(2000, vocab, 4, 1)
    base = dict(vocab_size=vocab, context_len=4, levels=1, proto_k=0)
    plain = hm.HoloConfig(cache_capacity=0, **base)
    cached = hm.HoloConfig(cache_capacity=1 << 12, **base)
    accs = {}
    for name, cfg in (("plain", plain), ("cached", cached)):
        state = hm.init_memory(cfg)
        state = hm.store(state, ctx, tgt, config=cfg)
        accs[name] = float(jnp.mean(hm.predict(state, ctx, config=cfg) == tgt))
    assert accs["cached"] == 1.0
    assert accs["plain"] < 0.2  # 2000 pairs in 16 buckets of 16 floats: superposition is saturated


def test_tower_recall_with_few_patterns_per_bucket():
    cfg = hm.HoloConfig(vocab_size=256, context_len=3, levels=3, cache_capacity=0, proto_k=0)
    ctx, tgt = _pairs(200, 256, 3, 2)  # ~0.05 patterns per leaf
    state = hm.store(hm.init_memory(cfg), ctx, tgt, config=cfg)
    acc = float(jnp.mean(hm.predict(state, ctx, config=cfg) == tgt))
    assert acc > 0.9


def test_dream_prototypes_narrow_candidates_and_coarse_levels():
    cfg = hm.HoloConfig(vocab_size=64, context_len=2, levels=2, cache_capacity=1 << 8, proto_depth=2, proto_k=2)
    ctx = jnp.array([[1, 2], [1, 2], [3, 4]], jnp.int32)
    tgt = jnp.array([7, 9, 5], jnp.int32)
    state = hm.store(hm.init_memory(cfg), ctx, tgt, config=cfg)
    state = hm.dream(state, config=cfg)
    assert int(state.counts[0]) == 3  # root = sum of all leaves after consolidation
    out = hm.retrieve(state, ctx, config=cfg)
    assert bool(out["has_proto"].all())
    cand = np.asarray(out["candidates"])
    assert cand[2, 5] and cand.sum(axis=1)[2] <= 2
    np.testing.assert_array_equal(np.asarray(hm.predict(state, ctx, config=cfg)), [9, 9, 5])  # last write wins
    lp = hm.log_probs(state, ctx, config=cfg)
    np.testing.assert_allclose(np.asarray(jnp.exp(lp).sum(axis=1)), 1.0, rtol=1e-5)
    forgot = hm.dream(state, config=cfg, forget=True)
    assert int(forgot.cache.size) == 0
    np.testing.assert_array_equal(np.asarray(forgot.proto_targets), np.asarray(state.proto_targets))


def test_orbax_round_trip(tmp_path):
    cfg = hm.HoloConfig(vocab_size=32, context_len=3, levels=2, cache_capacity=1 << 8, proto_depth=1, proto_k=4)
    ctx, tgt = _pairs(300, 32, 3, 4)
    state = hm.dream(hm.store(hm.init_memory(cfg), ctx, tgt, config=cfg), config=cfg)
    save_memory(str(tmp_path / "mem"), state, cfg, extra={"note": "test"})
    back, cfg2, extra = restore_memory(str(tmp_path / "mem"))
    assert cfg2 == cfg and extra == {"note": "test"}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(hm.predict(back, ctx, config=cfg2)), np.asarray(hm.predict(state, ctx, config=cfg)))
    with pytest.raises(HoloCheckpointError, match="train.holo"):
        restore_memory(str(tmp_path / "nothing"))


def test_config_errors_name_valid_choices():
    with pytest.raises(hm.HoloConfigError, match=r"unknown memory config keys \['levles'\]; valid: \['angle_scale'"):
        hm.HoloConfig.from_dict({"levles": 3})
    with pytest.raises(hm.HoloConfigError, match="cosine"):
        hm.HoloConfig(score="dot")
    with pytest.raises(hm.HoloConfigError, match="context_len"):
        cfg = hm.HoloConfig(vocab_size=8, context_len=3, levels=0, cache_capacity=0, proto_k=0)
        hm.store(hm.init_memory(cfg), jnp.zeros((2, 4), jnp.int32), jnp.zeros((2,), jnp.int32), config=cfg)


def test_vorticity_score_mode_recalls_single_pair():
    cfg = hm.HoloConfig(vocab_size=64, context_len=4, levels=0, cache_capacity=0, proto_k=0, score="vorticity")
    ctx, tgt = _pairs(1, 64, 4, 9)
    state = hm.store(hm.init_memory(cfg), ctx, tgt, config=cfg)
    assert int(hm.predict(state, ctx, config=cfg)[0]) == int(tgt[0])


def test_prototype_weights_and_dream_with_episodes_accumulates():
    pt, pc = top_k_per_bucket(jnp.array([0, 0, 1]), jnp.array([3, 4, 5]), jnp.ones(3, bool), 2, 8, 2, weights=jnp.array([1, 5, 2]))
    np.testing.assert_array_equal(np.asarray(pt), [[4, 3], [5, -1]])
    np.testing.assert_array_equal(np.asarray(pc), [[5, 1], [2, 0]])
    cfg = hm.HoloConfig(vocab_size=16, context_len=2, levels=1, cache_capacity=0, proto_depth=1, proto_k=2)
    ctx = jnp.array([[1, 2]] * 3 + [[1, 2]], jnp.int32)
    tgt = jnp.array([7, 7, 7, 3], jnp.int32)
    state = hm.dream(hm.init_memory(cfg), (ctx, tgt), config=cfg)
    state = hm.dream(state, (ctx[:1], tgt[:1]), config=cfg)
    out = hm.retrieve(state, ctx[:1], config=cfg)
    p = np.asarray(out["proto_p"][0])
    np.testing.assert_allclose([p[7], p[3]], [0.8, 0.2], rtol=1e-6)  # counts 4 and 1 after two dreams
