"""Small policies with the rollout interface (init_state / step / __call__), for CPU tests, the tiny
GRPO config and ``--small`` benches: a real trainable GRU byte LM and a scripted (fixed-logits) one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.ops.constants import BYTE_VOCAB_SIZE


class TinyGRULM(nnx.Module):
    """Embedding -> one GRU cell -> linear head. ``logit_scale`` sharpens the untrained distribution."""

    def __init__(self, d: int = 16, vocab: int = BYTE_VOCAB_SIZE, logit_scale: float = 3.0, *, rngs: nnx.Rngs):
        self.d = d
        self.logit_scale = logit_scale
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.wx = nnx.Linear(d, 3 * d, rngs=rngs)
        self.wh = nnx.Linear(d, 3 * d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def init_state(self, batch_size: int) -> jax.Array:
        return jnp.zeros((batch_size, self.d), jnp.float32)

    def step(self, token: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = self.embed(token)
        xz, xr, xn = jnp.split(self.wx(x), 3, axis=-1)
        hz, hr, hn = jnp.split(self.wh(h), 3, axis=-1)
        z, r = jax.nn.sigmoid(xz + hz), jax.nn.sigmoid(xr + hr)
        h = (1 - z) * jnp.tanh(xn + r * hn) + z * h
        return self.logit_scale * self.head(h).astype(jnp.float32), h

    def __call__(self, tokens: jax.Array) -> jax.Array:
        def f(h, tok):
            logits, h = self.step(tok, h)
            return h, logits

        _, logits = jax.lax.scan(f, self.init_state(tokens.shape[0]), tokens.T)
        return logits.transpose(1, 0, 2)


class ScriptPolicy(nnx.Module):
    """Emits fixed logits by step index: step t (counting every token fed, prompt included) returns
    ``script[min(t, L-1)]``. Build the script with :func:`script_logits`."""

    def __init__(self, script: np.ndarray):
        self.script = nnx.Variable(jnp.asarray(script, jnp.float32))

    def init_state(self, batch_size: int) -> jax.Array:
        return jnp.zeros((batch_size,), jnp.int32)

    def step(self, token: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        s = self.script[...]
        return s[jnp.minimum(t, s.shape[0] - 1)], t + 1

    def __call__(self, tokens: jax.Array) -> jax.Array:
        s = self.script[...]
        idx = jnp.minimum(jnp.arange(tokens.shape[1]), s.shape[0] - 1)
        return jnp.broadcast_to(s[idx][None], (tokens.shape[0], tokens.shape[1], s.shape[1]))


def script_logits(prompt_len: int, tokens: list[int], spreads: list[dict[int, float]] | None = None,
                  vocab: int = BYTE_VOCAB_SIZE, sure: float = 0.999) -> np.ndarray:
    """Logits for a ScriptPolicy whose greedy completion after a prompt of ``prompt_len`` tokens is
    ``tokens``. Position k puts probability ``sure`` on tokens[k] (the rest uniform) unless
    ``spreads[k]`` is given: then a {token: prob} table (tokens[k] must be its argmax, the
    remaining mass uniform over the other tokens)."""
    out = np.zeros((prompt_len - 1 + len(tokens), vocab), np.float64)
    for k, tok in enumerate(tokens):
        table = (spreads[k] if spreads and spreads[k] else None) or {tok: sure}
        if max(table, key=table.get) != tok:
            raise ValueError(f"position {k}: the scripted token {tok} must be the most likely entry")
        rest = (1.0 - sum(table.values())) / (vocab - len(table))
        p = np.full(vocab, rest)
        for t_, pr in table.items():
            p[t_] = pr
        out[prompt_len - 1 + k] = np.log(p)
    return out.astype(np.float32)
