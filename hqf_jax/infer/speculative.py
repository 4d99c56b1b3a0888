"""Self-speculative decoding with the byte LM's extra heads (``model.extra_heads = k``).

Each iteration feeds ``[x, d_1 .. d_k]`` (the pending byte, drawn from the model's own distribution, and k
drafts the extra heads proposed from the previous hidden state) through the chunkwise form in one pass, then
accepts draft d_j with probability min(1, p_j(d_j) / q_j(d_j)) in order (standard speculative sampling,
Leviathan et al. 2023; Chen et al. 2023). At the first rejection the next pending byte is drawn from the
residual max(p_j - q_j, 0) (normalised); when every draft is accepted it is drawn from p after d_k. So every
emitted byte has exactly the distribution of plain sampling with the same temperature / top-k / top-p (the
target p is the filtered distribution; greedy rows use one-hot distributions, which makes the output equal
to greedy decoding). The state keeps the pending byte and the accepted drafts only (``step.absorb``).

One loop for two engines: Engine (the RetNet byte LM, its inference forward ``step.forward``; ragged prompts; an
engine built with a fused decode_impl verifies with its fused weights: one dot for [Wq|Wk|Wv|Wg], one for
[Wgate|Wup] a layer) and
RecurrentEngine (RetNPhi, ``retnphi.extra_heads = k``: the model's own chunkwise form collects what ``absorb``
needs; prompts of one length, as its prefill). Each gives a prefill and a verify function (``KINDS``).

    ids, stats = speculative_generate(engine, prompts, max_new, temperature=..., seed=...)
    stats["bytes_per_verify"]   # accepted bytes per verify pass (1 + accepted drafts), over all rows
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.infer.engine import Engine, EngineError, Settings, encode
from hqf_jax.infer.generator import repeat_row0
from hqf_jax.infer.step import absorb, forward, init_state
from hqf_jax.ops.sampling import filter_logits_rows


def target_probs(logits: jax.Array, settings: Settings, vocab_limit: int, filtering: bool = True) -> jax.Array:
    """The distribution a row samples from, (B, ..., V): softmax of the filtered, tempered logits; one-hot at
    the argmax for temperature 0. ``filtering=False`` (no row has top-k or top-p on) leaves out the filter's sort:
    filter_logits_rows returns such rows unchanged, bit for bit."""
    logits = logits.astype(jnp.float32)
    logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
    extra = logits.ndim - 2
    expand = lambda x: x.reshape(x.shape + (1,) * (extra + 1))
    t = settings.temperature
    hot = expand(t > 0)
    flat = logits.reshape(logits.shape[0], -1, logits.shape[-1])
    n = flat.shape[1]
    rep = lambda x: jnp.repeat(x, n)
    scaled = flat / jnp.where(t > 0, t, 1.0)[:, None, None]
    filt = scaled.reshape(-1, flat.shape[-1])
    if filtering:
        filt = filter_logits_rows(filt, rep(settings.top_k), rep(settings.top_p))
    soft = jax.nn.softmax(filt, axis=-1).reshape(logits.shape)
    onehot = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=jnp.float32)
    return jnp.where(hot, soft, onehot)


def _draw(key, probs):
    """One id per row from probs (B, V)."""
    return jax.vmap(lambda k, p: jax.random.categorical(k, jnp.log(p)))(key, probs).astype(jnp.int32)


def _row_keys(settings: Settings, counter: jax.Array, n: int) -> jax.Array:
    """(n, B, 2) keys of a row for its ``counter``-th draw: independent of the batch."""
    base = jax.vmap(lambda s, c: jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(s), 0x5BEC), c))(
        settings.seed, counter)
    return jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, n))(base), 1, 0)


def _drafts(model, hidden, settings, counter, vocab_limit, filtering=True):
    q = target_probs(jnp.moveaxis(model.extra_logits(hidden), 0, 1), settings, vocab_limit, filtering)  # (B, k, V)
    keys = _row_keys(settings, counter * 2 + 1, q.shape[1])
    d = jnp.stack([_draw(keys[j], q[:, j]) for j in range(q.shape[1])], 1)
    return d, q


def _retnet_prefill(model, tokens, lengths, fw=None):
    """(last logits (B, V), state, last hidden (B, d)) of left-padded prompts: the byte LM's inference forward
    (its dots fused when the engine holds fused weights ``fw``)."""
    t = tokens.shape[1]
    valid = jnp.arange(t)[None, :] >= (t - lengths)[:, None]
    logits, state, hidden = forward(model, tokens, init_state(model.cfg, lengths - t), valid, return_hidden=True,
                                    fw=fw)
    return logits[:, -1], state, hidden[:, -1]


def _retnet_verify(model, chunk, state, fw=None):
    """(logits (B, k+1, V), hidden (B, k+1, d), kvs for absorb) of one verify chunk."""
    kvs = []
    logits, _, hidden = forward(model, chunk, state, kvs=kvs, return_hidden=True, fw=fw)
    return logits, hidden, kvs


def _recurrent_prefill(model, tokens, lengths, fw=None):  # RetNPhi: its own form (no fused weights)
    """The model's own form over prompts of one length; offsets made per row (verify moves rows apart)."""
    logits, state, hidden = model(tokens, model.init_state(tokens.shape[0]), return_state=True, return_hidden=True)
    state = tuple(s._replace(offset=jnp.broadcast_to(s.offset, lengths.shape).astype(jnp.int32)) for s in state)
    return logits[:, -1], state, hidden[:, -1]


def _recurrent_verify(model, chunk, state, fw=None):
    kvs = []
    logits, _, hidden = model(chunk, state, form="chunkwise", return_state=True, return_hidden=True, kvs=kvs)
    return logits, hidden, kvs


KINDS = {"retnet": (_retnet_prefill, _retnet_verify), "recurrent": (_recurrent_prefill, _recurrent_verify)}


def head_count(model) -> int:
    """k of a model's extra heads (the byte LM and RetNPhi hold them only when k > 0)."""
    heads = getattr(model, "extra_heads", None)
    return len(heads) if heads else 0


# Verify passes per trip of the outer while loop. Its condition is data-dependent, so each trip waits for the device
# (a copy of the predicate to the host) before the host launches the next trip's ~350 kernels; the inner loop of a
# fixed count launches ahead. A trip past the last live row costs at most PASSES_PER_SYNC - 1 passes; rows that are
# done keep drafting past n, dropped from the output (as when other rows still run). The saving is not measured on
# its own (docs/BENCHMARKS.md stop 32: the profiles before and after are not like for like).
PASSES_PER_SYNC = 4


@functools.partial(jax.jit, static_argnames=("graphdef", "n", "vocab_limit", "kind", "filtering", "passes"))
def _speculate(graphdef, weights, tokens, lengths, settings: Settings, n, vocab_limit, kind="retnet", fw=None,
               filtering=True, passes=PASSES_PER_SYNC):
    model = nnx.merge(graphdef, weights)
    prefill, verify = KINDS[kind]
    k = head_count(model)
    b = tokens.shape[0]
    last_logits, state, last_hidden = prefill(model, tokens, lengths, fw)
    zero = jnp.zeros((b,), jnp.int32)
    p0 = target_probs(last_logits, settings, vocab_limit, filtering)
    pending = _draw(_row_keys(settings, zero, 1)[0], p0)
    drafts, q = _drafts(model, last_hidden, settings, zero, vocab_limit, filtering)
    out = jnp.zeros((b, n + k + 1), jnp.int32)
    rows = jnp.arange(b)[:, None]

    def cond(c):
        return jnp.min(c[4]) < n

    def body(c):
        state, pending, drafts, q, emitted, it, out, verifies = c
        chunk = jnp.concatenate([pending[:, None], drafts], 1)  # (B, k+1)
        logits, hidden, kvs = verify(model, chunk, state, fw)
        # (B, k+1, V): p[:, j] is the law of the byte after chunk[:, j]
        p = target_probs(logits, settings, vocab_limit, filtering)
        keys = _row_keys(settings, it * 2 + 2, 2)
        u = jax.vmap(lambda kk: jax.random.uniform(kk, (k,)))(keys[0])  # (B, k)
        pd = jnp.take_along_axis(p[:, :k], drafts[..., None], -1)[..., 0]
        qd = jnp.take_along_axis(q, drafts[..., None], -1)[..., 0]
        accept = u * qd < pd  # u < p/q without dividing (q(d) > 0 for a drawn d)
        a = jnp.sum(jnp.cumprod(accept.astype(jnp.int32), axis=1), axis=1)  # leading accepted drafts, (B,)
        residual = jnp.maximum(p[:, :k] - q, 0.0)
        residual = jnp.where(residual.sum(-1, keepdims=True) > 0, residual, p[:, :k])
        law = jnp.concatenate([residual, p[:, k:]], 1)  # index a: residual at the rejection, or p after d_k
        law = jnp.take_along_axis(law, a[:, None, None], 1)[:, 0]
        law = law / law.sum(-1, keepdims=True)
        nxt = _draw(keys[1], law)
        idx = emitted[:, None] + jnp.arange(k + 1)[None]
        idx = jnp.where(jnp.arange(k + 1)[None] <= a[:, None], idx, out.shape[1])
        out = out.at[rows, idx].set(chunk, mode="drop")
        state = absorb(kvs, a + 1)
        h_last = jnp.take_along_axis(hidden, a[:, None, None], 1)[:, 0]
        drafts, q = _drafts(model, h_last, settings, it + 1, vocab_limit, filtering)
        live = emitted < n
        verifies = verifies + live.astype(jnp.int32)
        return state, nxt, drafts, q, emitted + a + 1, it + 1, out, verifies

    carry = (state, pending, drafts, q, zero, zero, out, zero)
    trip = body if passes == 1 else lambda c: jax.lax.fori_loop(0, passes, lambda _, x: body(x), c)
    carry = jax.lax.while_loop(cond, trip, carry)
    return carry[6][:, :n], carry[4], carry[7], carry[5][0]


def speculative_generate(engine, prompts, max_new: int, *, seed=0, temperature=0.0, top_k=0, top_p=1.0,
                         passes: int = PASSES_PER_SYNC):
    """(ids (B, max_new), stats) by self-speculative decoding with an Engine or a RecurrentEngine (RetNPhi);
    needs a model with extra heads. An engine built with an explicit ``min_rows`` pads the batch to that many rows
    (not the decode default's automatic padding: the verify pass already runs k + 1 rows a sequence; 125M at batch
    1 padded to 8 rows ran 0.87x, H200, 2026-11-30),
    with copies of row 0 (its prompt and settings, so they repeat its bytes) dropped after: the real rows' bytes
    do not change. ``passes``: verify passes between two looks at whether every row is done (PASSES_PER_SYNC); the
    output does not depend on it."""
    k = head_count(engine.model)
    if not k:
        raise EngineError("speculative decoding drafts with the extra heads: train with model.extra_heads=k "
                          "(RetNPhi: model.retnphi.extra_heads=k; k >= 1, e.g. 3) and train.extra_heads_weight > 0")
    if max_new < 1:
        raise EngineError(f"max_new must be >= 1; got {max_new}")
    if passes < 1:
        raise EngineError(f"passes must be >= 1; got {passes}")
    settings = Settings.make(len(prompts), seed, temperature, top_k, top_p)
    fw = None
    if isinstance(engine, Engine):  # a fused engine's weights make the verify pass's dots fewer and wider
        kind, (tokens, lengths), fw = "retnet", engine._pad(prompts), engine.fused_weights
    else:  # RecurrentEngine: the model's own prefill, no left padding
        ids = [encode(p) for p in prompts]
        if not ids or len({len(x) for x in ids}) != 1:
            raise EngineError("speculative decoding with a RecurrentEngine takes one or more prompts of one length")
        kind, tokens = "recurrent", jnp.asarray(np.stack(ids))
        lengths = jnp.full((len(ids),), tokens.shape[1], jnp.int32)
    b = len(prompts)
    filtering = bool(np.any(np.asarray(top_k) > 0) or np.any(np.asarray(top_p) < 1.0))  # from the host's values
    rows = (engine.min_rows or 1) if isinstance(engine, Engine) else engine.min_rows  # explicit min_rows only
    if rows > b:  # copies of row 0, dropped after
        tokens, lengths, settings = jax.tree.map(lambda a: repeat_row0(a, rows), (tokens, lengths, settings))
    ids, emitted, verifies, run = _speculate(engine.graphdef, engine.weights, tokens, lengths, settings,
                                             int(max_new), engine.vocab_limit, kind, fw, filtering, int(passes))
    ids, emitted, verifies = np.asarray(ids)[:b], np.asarray(emitted)[:b], np.asarray(verifies)[:b]
    # bytes per verify pass while a row was live: each pass emits the pending byte and the accepted drafts
    per = max_new / np.maximum(verifies, 1)
    # passes_run: every pass the device ran (a multiple of ``passes``, past the last live row's): what a pass's
    # cost is timed over
    return ids, {"bytes_per_verify": float(np.mean(per)), "verifies": verifies.tolist(), "heads": k,
                 "passes_run": int(run)}
