"""The SO(4)/Cl(3,1) holographic memory: tower of superposed bindings + episodic cache + prototypes.

Store (jitted, batched): a context of L token ids becomes the ordered product C of its SO(4)
token matrices; its 16 Clifford coefficients route it to a leaf satellite (``tower.route``);
the leaf accumulates ``bind_weight * C @ T`` (T the target's matrix) and a count; the exact
(context, target) pair goes to the episodic cache when ``cache_capacity > 0``.

Retrieve: exact episodic hit first; otherwise unbind ``C^T M`` from the deepest tower bucket
whose count reaches ``min_count`` (coarse levels are the sums of their children, refreshed by
``dream``) and score all vocabulary matrices (a (B, 16) x (16, V) matmul; cosine, or the
vorticity-weighted score of ops/grace.py). Prototypes (``dream``: the K most frequent targets of
each bucket at ``proto_depth``, counted over the episodic cache) restrict the arg-max to their
candidates when a bucket has any.

Probabilities (for bits per byte and sampling; the prototype mask narrows only the arg-max,
a masked softmax would give unseen targets zero mass), all weights are config fields:
``p_rest = mix_proto * p_proto + (1 - mix_proto) * softmax(scores / temperature)`` where the
bucket has prototypes (``p_rest = softmax`` otherwise), ``p = mix_episodic * onehot(hit) +
(1 - mix_episodic) * p_rest`` on an episodic hit, then ``(1 - floor) p + floor / V``.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax.config_checks import dataclass_from_dict
from hqf_jax.errors import HqfError
from hqf_jax.holo import episodic, tower
from hqf_jax.holo.prototypes import top_k_per_bucket
from hqf_jax.ops import clifford, grace, so4
from hqf_jax.ops.constants import BYTE_VOCAB_SIZE, PHI, PHI_INV


class HoloConfigError(HqfError, ValueError):
    """A bad memory configuration; the message names the valid choices."""


@dataclasses.dataclass(frozen=True)
class HoloConfig:
    vocab_size: int = BYTE_VOCAB_SIZE
    context_len: int = 4
    levels: int = 4  # tower depth: 16**levels leaf satellites (0 = one bucket, no routing)
    resolution: float = PHI_INV**8  # finest basin quantisation
    level_ratio: float = PHI**2  # each coarser level quantises this much coarser
    key_grace: bool = True  # apply Grace to the coefficients before quantising
    bind_weight: float = PHI_INV
    cache_capacity: int = 1 << 16  # episodic slots, power of two; 0 disables the cache
    max_probes: int = 64
    proto_depth: int = 4  # tower depth of the prototype buckets (<= levels)
    proto_k: int = 8  # candidates per prototype bucket; 0 disables prototypes
    min_count: int = 1  # fall back to a coarser bucket when the deeper one holds fewer patterns
    score: str = "cosine"  # "cosine" or "vorticity"
    vorticity_weight: float = PHI_INV
    temperature: float = PHI_INV
    mix_episodic: float = 0.9
    mix_proto: float = 0.5
    floor: float = 1e-4
    embedding: str = "haar"  # "haar" or "grounded" (needs a vector table at init)
    angle_scale: float = 1.0  # grounded embeddings: std of the PCA angles
    seed: int = 0

    def __post_init__(self):
        if self.score not in ("cosine", "vorticity"):
            raise HoloConfigError(f"score must be 'cosine' or 'vorticity', got {self.score!r}")
        if self.embedding not in ("haar", "grounded"):
            raise HoloConfigError(f"embedding must be 'haar' or 'grounded', got {self.embedding!r}")
        if not 0 <= self.levels <= 7:
            raise HoloConfigError(f"levels must be in 0..7, got {self.levels}")
        if self.proto_k and not 0 <= self.proto_depth <= self.levels:
            raise HoloConfigError(f"proto_depth must be in 0..levels={self.levels}, got {self.proto_depth}")
        if self.cache_capacity and self.cache_capacity & (self.cache_capacity - 1):
            raise HoloConfigError(f"cache_capacity must be 0 or a power of two, got {self.cache_capacity}")
        if self.context_len < 1:
            raise HoloConfigError(f"context_len must be >= 1, got {self.context_len}")

    @classmethod
    def from_dict(cls, d: dict) -> "HoloConfig":
        return dataclass_from_dict(cls, d, HoloConfigError, "memory config")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)


class HoloState(NamedTuple):
    emb: jnp.ndarray  # (V, 4, 4) token rotations
    tower: jnp.ndarray  # (tower_size, 4, 4) superposed bindings, root first, leaves last
    counts: jnp.ndarray  # (tower_size,) int32 patterns per bucket
    cache: episodic.EpisodicCache
    proto_targets: jnp.ndarray  # (16**proto_depth, K) int32, -1 empty
    proto_counts: jnp.ndarray  # (16**proto_depth, K) int32
    n_stored: jnp.ndarray  # () int32


def init_memory(config: HoloConfig, vectors: jnp.ndarray | None = None) -> HoloState:
    """Fresh memory. ``vectors`` (V, D) are needed for grounded embeddings."""
    if config.embedding == "grounded":
        if vectors is None or vectors.shape[0] != config.vocab_size:
            raise HoloConfigError(
                f"grounded embeddings need a ({config.vocab_size}, D) vector table; pass vectors= or use embedding='haar'"
            )
        # full float32 matmuls: a GPU's default (TF32-like) precision leaves the rotations ~1e-3 off SO(4)
        with jax.default_matmul_precision("highest"):
            emb = so4.grounded_so4(jnp.asarray(vectors), config.angle_scale)
    else:
        emb = so4.haar_so4(jax.random.key(config.seed), (config.vocab_size,))
    so4.check_so4(emb, what="token embeddings")
    n = tower.tower_size(config.levels)
    cap = config.cache_capacity or 1
    pb = 16**config.proto_depth if config.proto_k else 1
    return HoloState(
        emb=emb.astype(jnp.float32),
        tower=jnp.zeros((n, 4, 4), jnp.float32),
        counts=jnp.zeros((n,), jnp.int32),
        cache=episodic.episodic_init(cap, config.context_len),
        proto_targets=jnp.full((pb, max(config.proto_k, 1)), -1, jnp.int32),
        proto_counts=jnp.zeros((pb, max(config.proto_k, 1)), jnp.int32),
        n_stored=jnp.zeros((), jnp.int32),
    )


def abstract_state(config: HoloConfig) -> HoloState:
    """ShapeDtypeStructs of a memory with this config (restore targets, no computation)."""
    sds = jax.ShapeDtypeStruct
    n = tower.tower_size(config.levels)
    cap = config.cache_capacity or 1
    pb = 16**config.proto_depth if config.proto_k else 1
    k = max(config.proto_k, 1)
    return HoloState(
        emb=sds((config.vocab_size, 4, 4), jnp.float32),
        tower=sds((n, 4, 4), jnp.float32),
        counts=sds((n,), jnp.int32),
        cache=episodic.EpisodicCache(
            keys=sds((cap, config.context_len), jnp.int32), values=sds((cap,), jnp.int32),
            size=sds((), jnp.int32), dropped=sds((), jnp.int32),
        ),
        proto_targets=sds((pb, k), jnp.int32),
        proto_counts=sds((pb, k), jnp.int32),
        n_stored=sds((), jnp.int32),
    )


def memory_footprint(config: HoloConfig) -> dict:
    """Stored numbers per component (4-byte floats or ints)."""
    tower_floats = 16 * tower.tower_size(config.levels)
    leaf_floats = 16 * 16**config.levels
    cache_ints = config.cache_capacity * (config.context_len + 1)
    proto_ints = 2 * 16**config.proto_depth * config.proto_k if config.proto_k else 0
    return dict(tower_floats=tower_floats, leaf_floats=leaf_floats, cache_ints=cache_ints, proto_ints=proto_ints)


# ---------------------------------------------------------------- pieces
def context_matrices(emb: jnp.ndarray, contexts: jnp.ndarray) -> jnp.ndarray:
    """(B, L) token ids -> (B, 4, 4) ordered products of their rotations."""
    return so4.context_product(emb[contexts], axis=1)


def leaf_of(config: HoloConfig, ctx_mats: jnp.ndarray) -> jnp.ndarray:
    mv = clifford.from_matrix(ctx_mats)
    return tower.route(mv, config.levels, config.resolution, config.level_ratio, config.key_grace)


def _check_batch(config: HoloConfig, contexts, targets=None):
    chex.assert_rank(contexts, 2)
    if contexts.shape[1] != config.context_len:
        raise HoloConfigError(f"contexts have length {contexts.shape[1]}, the memory was built for context_len={config.context_len}")
    if targets is not None:
        chex.assert_shape(targets, (contexts.shape[0],))


@partial(jax.jit, static_argnames=("config",))
def store(state: HoloState, contexts: jnp.ndarray, targets: jnp.ndarray, valid=None, *, config: HoloConfig) -> HoloState:
    """Write a batch of (context (B, L), target (B,)) pairs; ``valid`` (B,) masks padding out."""
    _check_batch(config, contexts, targets)
    b = contexts.shape[0]
    valid = jnp.ones((b,), bool) if valid is None else valid.astype(bool)
    c = context_matrices(state.emb, contexts)
    t = state.emb[targets]
    leaf = leaf_of(config, c) + tower.level_offsets(config.levels)[config.levels]
    w = (config.bind_weight * valid.astype(jnp.float32))[:, None, None]
    new_tower = state.tower.at[leaf].add(w * (c @ t))
    new_counts = state.counts.at[leaf].add(valid.astype(jnp.int32))
    cache = state.cache
    if config.cache_capacity:
        cache = episodic.episodic_insert(cache, contexts, targets, valid, max_probes=config.max_probes)
    return state._replace(tower=new_tower, counts=new_counts, cache=cache, n_stored=state.n_stored + jnp.sum(valid).astype(jnp.int32))


@partial(jax.jit, static_argnames=("config", "forget"))
def dream(
    state: HoloState,
    episodes: tuple[jnp.ndarray, jnp.ndarray] | None = None,
    *,
    config: HoloConfig,
    forget: bool = False,
) -> HoloState:
    """Consolidation pass.

    1. Coarse tower levels are refreshed as sums of their leaves (store writes leaves only).
    2. Prototypes: (bucket at ``proto_depth``, target) pairs are counted over the previous
       prototypes (with their counts), the episodic cache (one per distinct context, its last
       target) and ``episodes`` = (contexts (N, L), targets (N,)) if given (a replay of raw
       episodes, every occurrence counted); each bucket keeps its ``proto_k`` most frequent
       targets, so repeated dreaming accumulates truncated counts (a heavy-hitters sketch).
    3. ``forget`` empties the episodic cache afterwards (its content survives as prototypes).
    """
    levels = config.levels
    leaf_start = tower.level_offsets(levels)[levels]
    new_tower = tower.aggregate_levels(state.tower[leaf_start:], levels)
    new_counts = tower.aggregate_levels(state.counts[leaf_start:], levels)
    pt, pc = state.proto_targets, state.proto_counts
    cache = state.cache
    if config.proto_k:
        nb = 16**config.proto_depth
        b_list = [jnp.repeat(jnp.arange(nb, dtype=jnp.int32), pt.shape[1])]
        t_list, v_list, w_list = [pt.reshape(-1)], [pt.reshape(-1) >= 0], [pc.reshape(-1)]

        def bucket_of(ctx):
            c = context_matrices(state.emb, jnp.maximum(ctx, 0))
            return tower.level_bucket(leaf_of(config, c), levels, config.proto_depth)

        if config.cache_capacity:
            ok = cache.keys[:, 0] != episodic.EMPTY
            b_list.append(bucket_of(cache.keys))
            t_list.append(cache.values)
            v_list.append(ok)
            w_list.append(jnp.ones_like(cache.values))
        if episodes is not None:
            ctx, tgt = episodes
            _check_batch(config, ctx, tgt)
            b_list.append(bucket_of(ctx))
            t_list.append(tgt.astype(jnp.int32))
            v_list.append(jnp.ones(tgt.shape, bool))
            w_list.append(jnp.ones(tgt.shape, jnp.int32))
        tt = jnp.concatenate(t_list)
        pt, pc = top_k_per_bucket(
            jnp.concatenate(b_list), jnp.maximum(tt, 0), jnp.concatenate(v_list), nb, config.vocab_size,
            config.proto_k, weights=jnp.concatenate(w_list),
        )
    if forget and config.cache_capacity:
        cache = episodic.episodic_init(config.cache_capacity, config.context_len)
    return state._replace(tower=new_tower, counts=new_counts, proto_targets=pt, proto_counts=pc, cache=cache)


@partial(jax.jit, static_argnames=("config",))
def retrieve(state: HoloState, contexts: jnp.ndarray, *, config: HoloConfig) -> dict:
    """Everything a prediction needs, for contexts (B, L).

    Returns a dict: ``scores`` (B, V) holographic scores, ``candidates`` (B, V) bool prototype
    mask (all True where the bucket has none), ``proto_p`` (B, V) prototype distribution,
    ``has_proto`` (B,), ``hit`` / ``episodic`` (B,) exact cache result, ``depth`` (B,) tower
    depth used.
    """
    _check_batch(config, contexts)
    b = contexts.shape[0]
    v = config.vocab_size
    levels = config.levels
    c = context_matrices(state.emb, contexts)
    leaf = leaf_of(config, c)
    offs = tower.level_offsets(levels)
    buckets = jnp.stack([offs[d] + tower.level_bucket(leaf, levels, d) for d in range(levels + 1)], axis=1)
    cnt = state.counts[buckets]  # (B, levels + 1)
    ok = cnt >= config.min_count
    depth = jnp.where(jnp.any(ok, axis=1), levels - jnp.argmax(ok[:, ::-1], axis=1), levels)
    bucket = jnp.take_along_axis(buckets, depth[:, None], axis=1)[:, 0]
    r = so4.unbind(state.tower[bucket], c)  # (B, 4, 4)
    if config.score == "vorticity":
        scores = grace.vorticity_weighted_score(
            clifford.from_matrix(r), clifford.from_matrix(state.emb), weight=config.vorticity_weight
        )
    else:
        rf = r.reshape(b, 16)
        ef = state.emb.reshape(v, 16)
        scores = (rf @ ef.T) / (2.0 * jnp.maximum(jnp.linalg.norm(rf, axis=1, keepdims=True), 1e-12))
    if config.proto_k:
        pb = tower.level_bucket(leaf, levels, config.proto_depth)
        pt, pc = state.proto_targets[pb], state.proto_counts[pb]
        has = pt[:, 0] >= 0
        onehot = pt[:, :, None] == jnp.arange(v, dtype=jnp.int32)[None, None, :]  # (B, K, V); no scatter
        cand = jnp.any(onehot, axis=1)
        proto_p = jnp.einsum("bk,bkv->bv", pc.astype(jnp.float32), onehot.astype(jnp.float32))
        proto_p = proto_p / jnp.maximum(proto_p.sum(axis=1, keepdims=True), 1.0)
        cand = jnp.where(has[:, None], cand, True)
    else:
        has = jnp.zeros((b,), bool)
        cand = jnp.ones((b, v), bool)
        proto_p = jnp.zeros((b, v), jnp.float32)
    if config.cache_capacity:
        hit, ep = episodic.episodic_lookup(state.cache, contexts, max_probes=config.max_probes)
    else:
        hit, ep = jnp.zeros((b,), bool), jnp.full((b,), -1, jnp.int32)
    return dict(scores=scores, candidates=cand, proto_p=proto_p, has_proto=has, hit=hit, episodic=ep, depth=depth)


def top1_from(out: dict) -> jnp.ndarray:
    """Top-1 target (B,) from ``retrieve`` output: episodic target on a hit, else the best
    prototype-allowed score."""
    best = jnp.argmax(jnp.where(out["candidates"], out["scores"], -jnp.inf), axis=1).astype(jnp.int32)
    return jnp.where(out["hit"], out["episodic"], best)


def mixture_log_probs(out: dict, config: HoloConfig, temperature=None, mix_proto=None, mix_episodic=None) -> jnp.ndarray:
    """(B, V) log-probabilities from ``retrieve`` output (the mixture of the module doc); the
    three weights default to the config's and may be traced values (tuning without recompiling)."""
    temp = config.temperature if temperature is None else temperature
    mp = config.mix_proto if mix_proto is None else mix_proto
    me = config.mix_episodic if mix_episodic is None else mix_episodic
    p = jax.nn.softmax(out["scores"] / temp, axis=1)  # unmasked: prototypes narrow only the arg-max
    p = jnp.where(out["has_proto"][:, None], mp * out["proto_p"] + (1 - mp) * p, p)
    onehot = jax.nn.one_hot(jnp.maximum(out["episodic"], 0), config.vocab_size, dtype=jnp.float32)
    p = jnp.where(out["hit"][:, None], me * onehot + (1 - me) * p, p)
    p = (1 - config.floor) * p + config.floor / config.vocab_size
    return jnp.log(p)


@partial(jax.jit, static_argnames=("config",))
def predict(state: HoloState, contexts: jnp.ndarray, *, config: HoloConfig) -> jnp.ndarray:
    """Top-1 target (B,) for contexts (B, L)."""
    return top1_from(retrieve(state, contexts, config=config))


@partial(jax.jit, static_argnames=("config",))
def log_probs(state: HoloState, contexts: jnp.ndarray, *, config: HoloConfig, temperature=None) -> jnp.ndarray:
    """(B, V) natural-log next-token probabilities (the mixture described in the module doc)."""
    return mixture_log_probs(retrieve(state, contexts, config=config), config, temperature)
