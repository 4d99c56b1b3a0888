"""Samples and continuations of byte prompts, batched into few jitted shapes (music, digits and zip evals)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from hqf_jax.nn import generate
from hqf_jax.ops.constants import NUM_BYTES
from hqf_jax.ops.sampling import sample_token


def sample_bytes(model, prompt: bytes, n: int, length: int, seed: int, temperature: float, top_p: float = 1.0,
                 batch: int = 32) -> list[bytes]:
    """``n`` continuations of ``prompt`` (``length`` bytes each), in batches of one jitted shape."""
    ids = generate.encode_prompt(prompt)
    out = []
    for i in tqdm(range(0, n, batch), desc="sampling", leave=False):
        prompts = jnp.asarray(np.tile(ids, (batch, 1)))
        toks = generate.sample(model, prompts, length, jax.random.PRNGKey(seed + i), temperature=temperature,
                               top_p=top_p)
        out += [generate.decode(row) for row in np.asarray(toks)]
    return out[:n]


def _continue_rows(graphdef, mstate, ids, lens, keys, num_steps: int, temperature: float, top_p: float):
    """Per row (vmapped, so each row has its own position offset): read ids[:len] one recurrent step
    at a time (steps past len leave the state alone), then sample ``num_steps`` bytes."""
    vocab = NUM_BYTES

    def pick(key, logits):
        return sample_token(key, logits, temperature, 0, top_p, vocab_limit=vocab)

    def row(ids, n, key):
        model = nnx.merge(graphdef, mstate)
        state = model.init_state(1)

        def read(carry, i):
            st, lg = carry
            lg2, st2 = model.step(ids[i][None], st)
            keep = i < n
            return (jax.tree.map(lambda a, b: jnp.where(keep, a, b), st2, st), jnp.where(keep, lg2, lg)), None

        (state, logits), _ = jax.lax.scan(read, (state, jnp.zeros((1, model.cfg.vocab_size), jnp.float32)),
                                          jnp.arange(ids.shape[0]))
        first = pick(jax.random.fold_in(key, 0), logits)

        def body(carry, i):
            tok, st = carry
            lg, st = model.step(tok, st)
            return (pick(jax.random.fold_in(key, i + 1), lg), st), tok[0]

        _, toks = jax.lax.scan(body, (first, state), jnp.arange(num_steps))
        return toks

    return jax.vmap(row)(ids, lens, keys)


_continue_jit = jax.jit(_continue_rows, static_argnums=(0, 5, 6, 7))


def continue_bytes(model, prompts: list[bytes], length: int, seed: int, temperature: float, top_p: float = 1.0,
                   bucket: int = 128) -> list[bytes]:
    """Continuations of prompts of different lengths in one batch (prompt lengths padded up to a
    multiple of ``bucket``, so one compile serves many prompts); each prompt starts from BOS."""
    rows = [generate.encode_prompt(p) for p in prompts]
    width = -(-max(len(r) for r in rows) // bucket) * bucket
    ids = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    lens = jnp.asarray([len(r) for r in rows], jnp.int32)
    keys = jnp.stack([jax.random.PRNGKey(seed + i) for i in range(len(rows))])
    graphdef, mstate = nnx.split(model)
    toks = _continue_jit(graphdef, mstate, jnp.asarray(ids), lens, keys, int(length), float(temperature), float(top_p))
    return [generate.decode(t) for t in np.asarray(toks)]
