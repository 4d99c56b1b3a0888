"""The varentropy gate: how much reward a code earns for the injected items it contains.

An item the compressor must use can be satisfied trivially by copying it from the prompt (appending
it verbatim): at such a position the policy is near-certain, so the distribution that emitted the item
has almost no varentropy (and entropy). An item woven into the code is emitted where the policy is
choosing among many live continuations: its distribution is dense, with a spread of surprisals.
The gate maps that signal at each injected position to [0, 1]:

    exp:     g(v) = 1 - exp(-v / tau)
    sigmoid: g(v) = sigmoid((v - threshold) / tau)
    hard:    g(v) = 1[v > threshold]
    none:    g(v) = 1

with v the varentropy (default) or the entropy, in nats^2 / nats, of the distribution that produced
the item's first byte (``positions="first"``) or the mean over its bytes (``"all"``). A code's gate
is the mean over the injected items of g (0 for an item that does not occur in the code).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax.rl.sampling import entropy_varentropy


class GateConfigError(ValueError):
    """A gate configuration that cannot work (the message names the fix)."""


@dataclasses.dataclass(frozen=True)
class GateConfig:
    signal: Literal["varentropy", "entropy"] = "varentropy"
    kind: Literal["exp", "sigmoid", "hard", "none"] = "exp"
    tau: float = 1.0
    threshold: float = 0.5
    positions: Literal["first", "all"] = "first"

    def __post_init__(self):
        if self.signal not in ("varentropy", "entropy"):
            raise GateConfigError(f"gate signal {self.signal!r}: use 'varentropy' or 'entropy'")
        if self.kind not in ("exp", "sigmoid", "hard", "none"):
            raise GateConfigError(f"gate kind {self.kind!r}: use 'exp', 'sigmoid', 'hard' or 'none'")
        if self.positions not in ("first", "all"):
            raise GateConfigError(f"gate positions {self.positions!r}: use 'first' or 'all'")
        if self.tau <= 0:
            raise GateConfigError(f"gate tau={self.tau}: must be > 0")


def gate_value(signal, cfg: GateConfig):
    """g(signal) elementwise (numpy or jax arrays)."""
    xp = jnp if isinstance(signal, jax.Array) else np
    if cfg.kind == "exp":
        return 1.0 - xp.exp(-signal / cfg.tau)
    if cfg.kind == "sigmoid":
        return 1.0 / (1.0 + xp.exp(-(signal - cfg.threshold) / cfg.tau))
    if cfg.kind == "hard":
        return (signal > cfg.threshold).astype(xp.float32)
    return xp.ones_like(signal)


def gate_from_logits(logits: jax.Array, cfg: GateConfig) -> jax.Array:
    """Gate per position from the logits (K, V) that emitted the injected bytes -> (K,)."""
    ent, var = entropy_varentropy(logits)
    return gate_value(var if cfg.signal == "varentropy" else ent, cfg)


def item_positions(code: bytes, items: Sequence[bytes], offset: int, first_only: bool) -> list[list[int] | None]:
    """Rollout positions of the first occurrence of each item in the code (None if absent).

    offset: the rollout position of the code's first byte (the prompt length)."""
    out = []
    for it in items:
        k = code.find(it) if it else -1
        if k < 0:
            out.append(None)
        else:
            span = range(k, k + (1 if first_only else len(it)))
            out.append([offset + j for j in span])
    return out


def code_gate(code: bytes, items: Sequence[bytes], offset: int, varentropy_row: np.ndarray,
              entropy_row: np.ndarray, cfg: GateConfig) -> tuple[float, float]:
    """(gate, mean signal at the used items) for one code given its rollout rows of statistics.

    No items: gate 1 (nothing to check), signal NaN. kind "none": gate 1, the signal still measured (how the
    gate-off arm's copies of injected items are seen)."""
    if not items:
        return 1.0, float("nan")
    row = varentropy_row if cfg.signal == "varentropy" else entropy_row
    gs, sig = [], []
    for pos in item_positions(code, items, offset, cfg.positions == "first"):
        if pos is None:
            gs.append(0.0)
            continue
        v = float(np.mean(row[pos]))
        sig.append(v)
        gs.append(float(gate_value(np.float64(v), cfg)))
    return (1.0 if cfg.kind == "none" else float(np.mean(gs))), (float(np.mean(sig)) if sig else float("nan"))
