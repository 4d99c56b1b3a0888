"""Byte-stream helpers for the holographic memory: windows, grounding vectors, training, evaluation."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from hqf_jax.holo import memory as hm

WORD_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def windows(stream: np.ndarray, context_len: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contexts (B, L) = the L bytes before each position (most recent last) and targets (B,)."""
    positions = np.asarray(positions)
    if positions.size and positions.min() < context_len:
        raise ValueError(f"positions must be >= context_len={context_len}")
    ctx = np.stack([stream[positions - context_len + i] for i in range(context_len)], axis=1)
    return ctx.astype(np.int32), stream[positions].astype(np.int32)


def spread(stream: np.ndarray, n_bytes: int, chunk: int = 4096, parity: int | None = None) -> np.ndarray:
    """``n_bytes`` taken as evenly spaced chunks across the whole stream (not a prefix, which in a
    name-ordered corpus is a few alphabetically-first files). ``parity`` 0/1 keeps every other
    chunk of a twice-as-large selection (disjoint tune / test halves); chunks shrink when the
    stream is too short for the request."""
    if n_bytes >= len(stream) and parity is None:
        return stream
    chunk = max(1, min(chunk, n_bytes))
    k = max(1, n_bytes // chunk) * (2 if parity is not None else 1)
    if k * chunk > len(stream):
        chunk = max(1, len(stream) // k)
    starts = np.linspace(0, len(stream) - chunk, k).astype(np.int64)
    if parity is not None:
        starts = starts[parity::2]
    return np.concatenate([stream[s : s + chunk] for s in starts])


def cooccurrence_vectors(stream: np.ndarray, vocab: int) -> np.ndarray:
    """(vocab, 2 vocab) grounding table: log(1 + counts) of the next and the previous byte."""
    s = np.asarray(stream, np.int64)
    nxt = np.zeros((vocab, vocab))
    np.add.at(nxt, (s[:-1], s[1:]), 1.0)
    table = np.concatenate([np.log1p(nxt), np.log1p(nxt.T)], axis=1)
    return (table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-9)).astype(np.float32)


def train_memory(state, config: hm.HoloConfig, stream: np.ndarray, batch_size: int = 8192, dream_every: int = 16,
                 progress: bool = True):
    """Store every (L bytes -> next byte) pair of the stream; dream every ``dream_every`` batches
    with the batches since the last dream as replayed episodes, and once at the end."""
    L = config.context_len
    positions = np.arange(L, len(stream))
    pending_c, pending_t = [], []
    bar = tqdm(range(0, len(positions), batch_size), desc="store", disable=not progress, unit="batch")
    for i, s in enumerate(bar):
        pos = positions[s : s + batch_size]
        ctx, tgt = windows(stream, L, pos)
        n = len(pos)
        valid = np.arange(batch_size) < n
        if n < batch_size:  # fixed shapes: pad the last batch and mask it out
            ctx = np.pad(ctx, ((0, batch_size - n), (0, 0)))
            tgt = np.pad(tgt, (0, batch_size - n))
        state = hm.store(state, jnp.asarray(ctx), jnp.asarray(tgt), jnp.asarray(valid), config=config)
        pending_c.append(ctx[:n])
        pending_t.append(tgt[:n])
        if (i + 1) % dream_every == 0:
            state = _dream(state, config, pending_c, pending_t)
            pending_c, pending_t = [], []
    return _dream(state, config, pending_c, pending_t)


def _dream(state, config, cs, ts):
    if not cs:
        return hm.dream(state, config=config)
    return hm.dream(state, (jnp.asarray(np.concatenate(cs)), jnp.asarray(np.concatenate(ts))), config=config)


@partial(jax.jit, static_argnames=("config",))
def _target_bits(out, targets, temperature, mix_proto, mix_episodic, *, config):
    """Bits of each target under the mixture renormalised over the 256 byte values, and
    whether the mixture's arg-max is the target."""
    lp = hm.mixture_log_probs(out, config, temperature, mix_proto, mix_episodic)[:, :256]
    lp = lp - jax.nn.logsumexp(lp, axis=1, keepdims=True)
    bits = -jnp.take_along_axis(lp, targets[:, None], axis=1)[:, 0] / jnp.log(2.0)
    return bits, jnp.argmax(lp, axis=1) == targets


@partial(jax.jit, static_argnames=("config",))
def _sample_hits(out, targets, key, temperature, mix_proto, mix_episodic, *, config):
    """Whether a byte sampled from the mixture at ``temperature`` (the notes' decoding rule) is the target."""
    lp = hm.mixture_log_probs(out, config, temperature, mix_proto, mix_episodic)[:, :256]
    return jax.random.categorical(key, lp, axis=1) == targets


@partial(jax.jit, static_argnames=("config",))
def mixture_top1(state, contexts, temperature, mix_proto, mix_episodic, *, config):
    """Arg-max byte of the mixture distribution (the better top-1 rule for language)."""
    out = hm.retrieve(state, contexts, config=config)
    return jnp.argmax(hm.mixture_log_probs(out, config, temperature, mix_proto, mix_episodic)[:, :256], axis=1)


def evaluate_memory(state, config: hm.HoloConfig, stream: np.ndarray, batch_size: int = 4096,
                    grid: list[tuple[float, float, float]] | None = None, progress: bool = False,
                    sample_seed: int | None = None) -> dict:
    """Top-1 accuracy and bits per byte over every position of the stream.

    ``top1`` follows ``predict`` (an episodic hit wins, else the prototype-narrowed arg-max of
    the holographic scores); ``top1_mixture`` is the arg-max of the mixture distribution.

    ``grid`` lists (temperature, mix_proto, mix_episodic) settings; bits are computed for each
    (one retrieval per batch serves them all) and the result reports the best setting with the
    bits of every setting under ``bpb_grid``. Default: the config's own setting.

    ``sample_seed``: also report ``top1_sample``, the share of positions where one byte sampled from the
    mixture (the config's temperature and weights) is the target (the notes' sampling at phi^-1).
    """
    grid = grid or [(config.temperature, config.mix_proto, config.mix_episodic)]
    L = config.context_len
    correct, n_all, hits, protos = 0, 0, 0, 0
    bits = np.zeros(len(grid))
    mix_correct = np.zeros(len(grid))
    sampled = 0
    key = jax.random.key(sample_seed) if sample_seed is not None else None
    positions = np.arange(L, len(stream))
    for s in tqdm(range(0, len(positions), batch_size), desc="eval", disable=not progress, unit="batch"):
        pos = positions[s : s + batch_size]
        n = len(pos)
        ctx, tgt = windows(stream, L, pos)
        if n < batch_size:
            ctx = np.pad(ctx, ((0, batch_size - n), (0, 0)))
            tgt = np.pad(tgt, (0, batch_size - n))
        out = hm.retrieve(state, jnp.asarray(ctx), config=config)
        top = np.asarray(hm.top1_from(out))[:n]
        t = jnp.asarray(tgt)
        for g, (temp, mp, me) in enumerate(grid):
            b, ok = _target_bits(out, t, temp, mp, me, config=config)
            bits[g] += float(np.sum(np.asarray(b)[:n]))
            mix_correct[g] += float(np.sum(np.asarray(ok)[:n]))
        if key is not None:
            key, sub = jax.random.split(key)
            hit = _sample_hits(out, t, sub, config.temperature, config.mix_proto, config.mix_episodic, config=config)
            sampled += int(np.sum(np.asarray(hit)[:n]))
        correct += int(np.sum(top == tgt[:n]))
        hits += int(np.sum(np.asarray(out["hit"])[:n]))
        protos += int(np.sum(np.asarray(out["has_proto"])[:n]))
        n_all += n
    bpb = bits / n_all
    best = int(np.argmin(bpb))
    res = dict(top1=correct / n_all, top1_mixture=float(mix_correct[best] / n_all), bpb=float(bpb[best]), setting=grid[best],
               bpb_grid=bpb.tolist(), n=n_all,
               episodic_hit_rate=hits / n_all, proto_rate=protos / n_all)
    if key is not None:
        res["top1_sample"] = sampled / n_all
    return res


def word_starts(stream: np.ndarray, min_pos: int, max_words: int, seed: int = 0) -> np.ndarray:
    """Positions where a word (run of [A-Za-z0-9_]) starts, sampled deterministically."""
    is_word = np.isin(stream, np.frombuffer(bytes(sorted(WORD_BYTES)), np.uint8))
    starts = np.nonzero(is_word[1:] & ~is_word[:-1])[0] + 1
    starts = starts[starts >= min_pos]
    if len(starts) > max_words:
        starts = np.sort(np.random.default_rng(seed).choice(starts, max_words, replace=False))
    return starts


def greedy_word_accuracy(predict_fn, stream: np.ndarray, context_len: int, starts: np.ndarray, max_len: int = 24) -> float:
    """Share of word starts where greedy byte decoding reproduces the whole next word exactly
    (up to the first non-word byte, which must also be predicted as a non-word byte).

    ``predict_fn(contexts (B, context_len) int) -> (B,) next bytes``.
    """
    word_lut = np.zeros(256, bool)
    word_lut[list(WORD_BYTES)] = True
    ctx = np.stack([stream[starts - context_len + i] for i in range(context_len)], axis=1).astype(np.int64)
    alive = np.ones(len(starts), bool)  # still matching
    done = np.zeros(len(starts), bool)  # word finished correctly
    for j in range(max_len):
        true = stream[np.minimum(starts + j, len(stream) - 1)]
        pred = np.asarray(predict_fn(ctx)).astype(np.int64)
        true_word = word_lut[true]
        finished_now = alive & ~done & ~true_word & ~word_lut[np.clip(pred, 0, 255)]
        done |= finished_now
        alive &= done | (pred == true)
        ctx = np.concatenate([ctx[:, 1:], true[:, None].astype(np.int64)], axis=1)
        if not np.any(alive & ~done):
            break
    return float(np.mean(done & alive))
