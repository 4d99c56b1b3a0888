"""Batched, jitted sampling from a policy, recording what GRPO and the varentropy gate need.

A policy is a Flax NNX module with the recurrent interface of the byte LM::

    init_state(batch_size) -> state                         (a pytree of arrays)
    step(token (B,) int32, state) -> (logits (B, V) float32, state)

and, for ``form="parallel"`` and teacher forcing, ``__call__(tokens (B, T)) -> logits (B, T, V)``.

Layout of a :class:`Rollout`: row b holds its prompt at positions [0, prompt_lens[b]) then the
sampled completion; every per-token array is aligned to the token it scores, so ``logprobs[b, t]``
is log p(tokens[b, t] | tokens[b, :t]) and position 0 (BOS) has none. ``mask`` is True on the
generated tokens up to and including the stop (stop token, end of a stop sequence, or the
max_new_tokens-th token); after it the row holds PAD_ID.

``form="recurrent"`` carries the O(1) state through ``step``; ``form="parallel"`` recomputes
``model(buffer)`` over the whole buffer at every step (what a naive loop does, O(T^2)); with the same
key both draw the same tokens, which the tests and bench/rollout.py use.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Literal, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.ops.constants import BOS_ID, EOS_ID, NUM_BYTES, PAD_ID
from hqf_jax.rl.sampling import NEG_INF, process_logits, token_stats


class RolloutError(ValueError):
    """A rollout request that cannot work (the message names the fix)."""


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """How to sample. Hashable: it is a static argument of the jitted rollout."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    stop_token: int | None = EOS_ID
    stop_sequences: tuple = ()  # of bytes or tuples of token ids; the stop is kept in the completion
    suppress_tokens: tuple = (BOS_ID, PAD_ID)  # never sampled (they would break the byte layout)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise RolloutError(f"max_new_tokens={self.max_new_tokens}: must be >= 1")
        if self.temperature <= 0:
            raise RolloutError(f"temperature={self.temperature}: must be > 0 (use top_k=1 for greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise RolloutError(f"top_p={self.top_p}: must be in (0, 1]")
        seqs = tuple(tuple(int(x) for x in s) for s in self.stop_sequences)
        if any(len(s) == 0 for s in seqs):
            raise RolloutError("an empty stop sequence would stop at once: remove it")
        object.__setattr__(self, "stop_sequences", seqs)
        object.__setattr__(self, "suppress_tokens", tuple(int(x) for x in self.suppress_tokens))


class Rollout(NamedTuple):
    tokens: jax.Array  # (B, T) int32: prompt, completion, PAD_ID after the stop
    logprobs: jax.Array  # (B, T) float32: log p under the model (temperature 1, no truncation)
    sample_logprobs: jax.Array  # (B, T) float32: log p under the sampling distribution
    entropy: jax.Array  # (B, T) float32: entropy of the model's distribution that predicted token t
    varentropy: jax.Array  # (B, T) float32: variance of the surprisal under that distribution
    mask: jax.Array  # (B, T) bool: generated tokens up to and including the stop
    prompt_lens: jax.Array  # (B,) int32
    lengths: jax.Array  # (B,) int32: number of generated tokens (mask.sum(1))
    stopped: jax.Array  # (B,) bool: ended by a stop token / stop sequence (not by the length limit)


def encode_prompts(prompts: Sequence[bytes | Sequence[int]], bos: bool = True,
                   width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Byte prompts -> (tokens (B, P) int32 right-padded with PAD_ID, lengths (B,) int32).

    width: a fixed P (one compiled rollout for every batch); None: the longest prompt.
    """
    rows = [([BOS_ID] if bos else []) + list(p) for p in prompts]
    if any(len(r) == 0 for r in rows):
        raise RolloutError("an empty prompt has no token to start from: pass bos=True")
    longest = max(len(r) for r in rows)
    if width is None:
        width = longest
    elif longest > width:
        raise RolloutError(f"a prompt of {longest} tokens exceeds width={width}: raise the prompt width "
                           "or shorten the sources")
    out = np.full((len(rows), width), PAD_ID, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out, np.array([len(r) for r in rows], np.int32)


def completions(rollout: Rollout, keep_specials: bool = False) -> list[list[int]]:
    """The generated token ids of each row (the masked positions), specials dropped unless asked."""
    toks, mask = np.asarray(rollout.tokens), np.asarray(rollout.mask)
    out = []
    for t, m in zip(toks, mask):
        ids = t[m].tolist()
        out.append(ids if keep_specials else [i for i in ids if i < NUM_BYTES])
    return out


def completion_bytes(rollout: Rollout, strip: Sequence[bytes] = ()) -> list[bytes]:
    """Completions as bytes (special ids dropped), with any trailing stop sequence in ``strip`` removed."""
    out = []
    for ids in completions(rollout):
        b = bytes(ids)
        for s in strip:
            if s and b.endswith(s):
                b = b[: -len(s)]
                break
        out.append(b)
    return out


def _stop_table(seqs: tuple) -> tuple[np.ndarray, int]:
    width = max((len(s) for s in seqs), default=1)
    table = np.full((max(len(seqs), 1), width), -1, np.int32)
    for i, s in enumerate(seqs):
        table[i, width - len(s):] = s
    return table, width


def _rollout_impl(graphdef, params, prompts, prompt_lens, key, cfg: SampleConfig, form: str,
                  prefill_len: int) -> Rollout:
    model = nnx.merge(graphdef, params)
    b, p = prompts.shape
    t_total = p + cfg.max_new_tokens
    buf = jnp.full((b, t_total), PAD_ID, jnp.int32).at[:, :p].set(prompts)
    zeros = jnp.zeros((b, t_total), jnp.float32)
    table_np, width = _stop_table(cfg.stop_sequences)
    table = jnp.asarray(table_np)
    have_seqs = len(cfg.stop_sequences) > 0
    state0 = model.init_state(b) if form == "recurrent" else None
    lp, ent, var = zeros, zeros, zeros
    if prefill_len:  # tokens [0, n) of every prompt in the model's training form, then step by step
        n = prefill_len
        logits_pre, state0 = model(buf[:, :n], state0, return_state=True)
        lp_pre, ent_pre, var_pre = token_stats(logits_pre, buf[:, 1:n + 1])
        lp, ent, var = (a.at[:, 1:n + 1].set(x) for a, x in ((lp, lp_pre), (ent, ent_pre), (var, var_pre)))

    def cond(c):
        t, done = c[0], c[8]
        return (t < t_total - 1) & ~jnp.all(done)

    def body(c):
        t, state, buf, lp, slp, ent, var, mask, done, n_gen, window, stopped_acc = c
        x = jax.lax.dynamic_index_in_dim(buf, t, axis=1, keepdims=False)
        if form == "recurrent":
            logits, state = model.step(x, state)
        else:
            logits = jax.lax.dynamic_index_in_dim(model(buf), t, axis=1, keepdims=False)
        logits = logits.astype(jnp.float32)
        forced = t + 1 < prompt_lens
        if cfg.suppress_tokens:
            logits_s = logits.at[:, jnp.asarray(cfg.suppress_tokens, jnp.int32)].set(NEG_INF)
        else:
            logits_s = logits
        plogits = process_logits(logits_s, cfg.temperature, cfg.top_k, cfg.top_p)
        sampled = jax.random.categorical(jax.random.fold_in(key, t), plogits, axis=-1).astype(jnp.int32)
        gen = ~forced & ~done
        prompt_next = jax.lax.dynamic_index_in_dim(buf, t + 1, axis=1, keepdims=False)
        nxt = jnp.where(forced, prompt_next, jnp.where(gen, sampled, PAD_ID))
        l_tok, e_tok, v_tok = token_stats(logits, nxt)
        s_tok = jnp.take_along_axis(jax.nn.log_softmax(plogits, -1), nxt[:, None], axis=-1)[:, 0]
        live = (forced | gen).astype(jnp.float32)
        col = t + 1
        buf = buf.at[:, col].set(nxt)
        lp = lp.at[:, col].set(l_tok * live)
        slp = slp.at[:, col].set(s_tok * gen.astype(jnp.float32))
        ent = ent.at[:, col].set(e_tok * live)
        var = var.at[:, col].set(v_tok * live)
        mask = mask.at[:, col].set(gen)
        n_gen = n_gen + gen.astype(jnp.int32)
        window = jnp.where(gen[:, None], jnp.concatenate([window[:, 1:], nxt[:, None]], axis=1), window)
        hit = jnp.zeros_like(gen)
        if cfg.stop_token is not None:
            hit = hit | (nxt == cfg.stop_token)
        if have_seqs:
            match = jnp.all((table[None] == -1) | (window[:, None, :] == table[None]), axis=-1)
            hit = hit | jnp.any(match, axis=-1)
        stopped = gen & hit
        done = done | stopped | (gen & (n_gen >= cfg.max_new_tokens))
        return (t + 1, state, buf, lp, slp, ent, var, mask, done, n_gen, window, stopped_acc | stopped)

    init = (jnp.int32(prefill_len), state0, buf, lp, zeros, ent, var, jnp.zeros((b, t_total), bool),
            jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32), jnp.full((b, width), -1, jnp.int32),
            jnp.zeros((b,), bool))
    out = jax.lax.while_loop(cond, body, init)
    _, _, buf, lp, slp, ent, var, mask, _, n_gen, _, stopped = out
    return Rollout(buf, lp, slp, ent, var, mask, prompt_lens, n_gen, stopped)


_rollout_jit = jax.jit(_rollout_impl, static_argnames=("graphdef", "cfg", "form", "prefill_len"))
PREFILL_BUCKET = 8  # the prefill length is rounded down to a multiple of this (few compiled variants)


def supports_prefill(model: nnx.Module) -> bool:
    """True for models whose ``__call__(tokens, state, return_state=True)`` returns (logits, state)."""
    try:
        return "return_state" in inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        return False


def one_device_placement(params):
    """Parameters that all live on one device, committed to it as a SingleDeviceSharding (no copy): jit keys its
    cache on the placement, so fresh (uncommitted), restored (committed) and trainer-placed (a 1-device mesh)
    copies of one model would each compile a rollout again; placed alike they share one executable. Parameters
    spread over several devices are left as they are."""
    devices = {d for x in jax.tree.leaves(params) for d in x.sharding.device_set}
    if len(devices) != 1:
        return params
    return jax.device_put(params, jax.sharding.SingleDeviceSharding(devices.pop()))


def rollout(model: nnx.Module, prompts, prompt_lens, key: jax.Array, cfg: SampleConfig,
            form: Literal["recurrent", "parallel"] = "recurrent", prefill: bool = True) -> Rollout:
    """Sample completions of a batch of prompts (jitted; compiled once per shape and config).

    prompts: (B, P) int32, right-padded; prompt_lens: (B,) int32 in [1, P]; key: a PRNG key.
    prefill: with the recurrent form and a model that supports it, the prompt prefix that every row
    shares in length (min(prompt_lens) - 1, rounded down to a multiple of 8) is run in one call of
    the model's training form, then the rest step by step. The sampled tokens do not depend on it.
    """
    if form not in ("recurrent", "parallel"):
        raise RolloutError(f"form={form!r}: use 'recurrent' (O(1) state) or 'parallel' (recompute)")
    need = ("init_state", "step") if form == "recurrent" else ("__call__",)
    missing = [n for n in need if not hasattr(model, n)]
    if missing:
        raise RolloutError(f"the policy {type(model).__name__} lacks {missing}: form={form!r} needs {need}")
    prompts = jnp.asarray(prompts, jnp.int32)
    prompt_lens = jnp.asarray(prompt_lens, jnp.int32)
    chex.assert_rank(prompts, 2)
    chex.assert_shape(prompt_lens, (prompts.shape[0],))
    n = 0
    if prefill and form == "recurrent" and supports_prefill(model):
        n = (int(np.min(np.asarray(prompt_lens))) - 1) // PREFILL_BUCKET * PREFILL_BUCKET
    graphdef, params = nnx.split(model)
    return _rollout_jit(graphdef, one_device_placement(params), prompts, prompt_lens, key, cfg, form, n)


def teacher_forced_stats(logits: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(logprobs, entropy, varentropy) (B, T) aligned like a Rollout, from parallel logits (B, T, V):
    position t scores tokens[:, t] with logits[:, t-1]; position 0 is 0."""
    chex.assert_rank([logits, tokens], [3, 2])
    lp, ent, var = token_stats(logits[:, :-1], tokens[:, 1:])
    pad = jnp.zeros((tokens.shape[0], 1), jnp.float32)
    return tuple(jnp.concatenate([pad, a], axis=1) for a in (lp, ent, var))


def teacher_forced_logprobs(model: nnx.Module, tokens: jax.Array) -> jax.Array:
    """log p(tokens[:, t] | tokens[:, :t]) (B, T) from one parallel forward pass; position 0 is 0."""
    logits = model(tokens)
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1),
                             tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.concatenate([jnp.zeros((tokens.shape[0], 1), jnp.float32), lp], axis=1)


def repeat_for_group(x, group_size: int):
    """Repeat each row G times (contiguously), the layout group_advantages expects."""
    return jnp.repeat(jnp.asarray(x), group_size, axis=0)
