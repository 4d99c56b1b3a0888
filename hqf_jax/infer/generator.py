"""What every byte engine shares (Engine in hqf_jax.infer.engine, RecurrentEngine in hqf_jax.infer.recurrent):
the error, per-row sampling settings (Settings), the batch in flight (Slots), prompt encoding and the ids' bytes,
the per-row sampling keys (a row's j-th byte uses fold_in(PRNGKey(seed), j)) and ByteGenerator, which gives
generate / generate_ids / stream to any engine with prefill and decode.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax.errors import HqfError
from hqf_jax.ops.constants import BOS_ID, EOS_ID, NUM_BYTES
from hqf_jax.ops.sampling import sample_rows


class EngineError(HqfError, ValueError):
    pass


class Settings(NamedTuple):
    """Per-row sampling settings, each (B,): seed (uint32), temperature (0 = greedy), top_k (0 = off),
    top_p (1 = off)."""

    seed: jax.Array
    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array

    @classmethod
    def make(cls, batch: int, seed=0, temperature=0.0, top_k=0, top_p=1.0) -> "Settings":
        """Scalars are broadcast to every row; a scalar seed gives row b the seed ``seed + b``."""
        seeds = np.asarray(seed, np.int64)
        seeds = seeds + np.arange(batch) if seeds.ndim == 0 else seeds
        full = lambda x, dt: np.broadcast_to(np.asarray(x, dt), (batch,))
        s, t, k, p = full(seeds % (1 << 32), np.uint32), full(temperature, np.float32), full(top_k, np.int32), \
            full(top_p, np.float32)  # checked on the host: no copy back from the device
        if (t < 0).any() or not np.isfinite(t).all() or ((p <= 0) | (p > 1)).any() or (k < 0).any():
            raise EngineError("sampling settings need temperature >= 0, 0 < top_p <= 1 and top_k >= 0")
        return cls(*(jnp.asarray(x) for x in (s, t, k, p)))


class Slots(NamedTuple):
    """A batch in flight: the recurrent state (offset (B,)), the next byte of each row (sampled, not yet fed),
    how many bytes each row has emitted, and its settings."""

    state: tuple
    token: jax.Array  # (B,) int32
    emitted: jax.Array  # (B,) int32
    settings: Settings


def repeat_row0(a: jax.Array, rows: int) -> jax.Array:
    """a (B, ...) with copies of its row 0 appended up to ``rows`` rows."""
    return jnp.concatenate([a, jnp.repeat(a[:1], rows - a.shape[0], 0)])


def pad_rows(slots: Slots, rows: int) -> tuple[Slots, Slots | None]:
    """(slots of at least ``rows`` rows, which leaves were padded) inside a jitted decode: copies of row 0 fill
    the batch in every leaf whose first axis is the batch (a position shared by all rows, a scalar, is left).
    A row's bytes depend on its own state and key only, so the real rows' bytes and states are unchanged (the
    copies, settings included, repeat row 0); ``take_rows`` drops them from exactly the padded leaves after."""
    b = slots.token.shape[0]
    if b >= rows:
        return slots, None
    padded = jax.tree.map(lambda a: bool(jnp.ndim(a)) and a.shape[0] == b, slots)
    return jax.tree.map(lambda a, p: repeat_row0(a, rows) if p else a, slots, padded), padded


def take_rows(slots: Slots, out: jax.Array, b: int, padded: Slots | None) -> tuple[Slots, jax.Array]:
    """Undo ``pad_rows``: the first b rows of the leaves it padded, and of out (B, n)."""
    if padded is None:
        return slots, out
    return jax.tree.map(lambda a, p: a[:b] if p else a, slots, padded), out[:b]


def encode(prompt: bytes | Sequence[int]) -> np.ndarray:
    """BOS then the prompt's bytes (int32): the layout the byte LM was trained on."""
    body = np.frombuffer(prompt, np.uint8) if isinstance(prompt, (bytes, bytearray)) else np.asarray(prompt)
    return np.concatenate([[BOS_ID], body.astype(np.int32)]).astype(np.int32)


def _keys(settings: Settings, emitted: jax.Array) -> jax.Array:
    return jax.vmap(lambda s, j: jax.random.fold_in(jax.random.PRNGKey(s), j))(settings.seed, emitted)


def _pick(logits, settings: Settings, emitted, vocab_limit):
    return sample_rows(_keys(settings, emitted), logits, settings.temperature, settings.top_k, settings.top_p,
                       vocab_limit)


class ByteGenerator:
    """generate_ids / generate / stream for any engine with ``prefill(prompts, settings) -> slots`` and
    ``decode(slots, n) -> (slots, (B, n) ids)`` (Engine, and RecurrentEngine for other byte models)."""

    def generate_ids(self, prompts, max_new: int, *, seed=0, temperature=0.0, top_k=0, top_p=1.0) -> np.ndarray:
        """(B, max_new) generated ids."""
        settings = Settings.make(len(prompts), seed, temperature, top_k, top_p)
        if max_new < 0:
            raise EngineError(f"max_new must be >= 0; got {max_new}")
        _, ids = self.decode(self.prefill(prompts, settings), max_new)
        return ids

    def generate(self, prompts, max_new: int, **kw) -> list[bytes]:
        """Continuations as bytes, cut at EOS when the engine allows it."""
        return [ids_to_bytes(row) for row in self.generate_ids(prompts, max_new, **kw)]

    def stream(self, prompt: bytes, max_new: int, *, chunk: int = 32, **kw):
        """Yield byte values of one prompt, ``chunk`` bytes per device call; stops at EOS."""
        slots = self.prefill([prompt], Settings.make(1, **kw))
        left = int(max_new)
        while left > 0:
            slots, ids = self.decode(slots, min(chunk, left))
            for i in ids[0]:
                if int(i) >= NUM_BYTES:  # EOS (or any non-byte id)
                    return
                yield int(i)
            left -= ids.shape[1]


def ids_to_bytes(ids) -> bytes:
    out = bytearray()
    for i in np.asarray(ids).reshape(-1):
        if int(i) == EOS_ID:
            break
        if 0 <= int(i) < NUM_BYTES:
            out.append(int(i))
    return bytes(out)
