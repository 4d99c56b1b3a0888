"""Host-side state of a Kolmogorov run, both serialisable to JSON for checkpoints:

* :class:`HistoryBuffer`: a ring buffer of past (source, code, fidelity), the material of the C->C->V
  pattern (re-compress a past code).
* :class:`RelaxationSchedule`: the number of injected / banned items, lowered by one each time the
  mean reward plateaus (no gain of ``min_delta`` in its EMA for ``patience`` updates).
"""

from __future__ import annotations

import dataclasses
import json
from typing import NamedTuple

import numpy as np


class Entry(NamedTuple):
    source: bytes
    code: bytes
    fidelity: float
    step: int


class HistoryBuffer:
    """Ring buffer of the last ``capacity`` accepted (source, code) pairs; sampling is seeded."""

    def __init__(self, capacity: int = 4096, min_fidelity: float = 0.0, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"history capacity={capacity}: must be >= 1")
        self.capacity = capacity
        self.min_fidelity = min_fidelity
        self.entries: list[Entry] = []
        self.next = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, source: bytes, code: bytes, fidelity: float, step: int = 0) -> bool:
        """Keep a pair if its code is non-empty and its fidelity reaches min_fidelity. Returns kept."""
        if not code or fidelity < self.min_fidelity:
            return False
        e = Entry(bytes(source), bytes(code), float(fidelity), int(step))
        if len(self.entries) < self.capacity:
            self.entries.append(e)
        else:
            self.entries[self.next] = e
        self.next = (self.next + 1) % self.capacity
        return True

    def sample(self, n: int) -> list[Entry]:
        if not self.entries:
            raise ValueError("the history buffer is empty: run C->D->V episodes first (pattern 'cdv') "
                             "before sampling C->C->V")
        idx = self.rng.integers(0, len(self.entries), size=n)
        return [self.entries[i] for i in idx]

    def to_json(self) -> str:
        return json.dumps({
            "capacity": self.capacity, "min_fidelity": self.min_fidelity, "next": self.next,
            "rng": self.rng.bit_generator.state,
            "entries": [[e.source.hex(), e.code.hex(), e.fidelity, e.step] for e in self.entries],
        })

    @classmethod
    def from_json(cls, text: str) -> "HistoryBuffer":
        d = json.loads(text)
        buf = cls(d["capacity"], d["min_fidelity"])
        buf.next = d["next"]
        buf.rng.bit_generator.state = d["rng"]
        buf.entries = [Entry(bytes.fromhex(s), bytes.fromhex(c), f, st) for s, c, f, st in d["entries"]]
        return buf


@dataclasses.dataclass
class RelaxationSchedule:
    """n (items to inject and to ban) starts at n_start and drops by one per plateau, to n_min."""

    n_start: int = 0
    n_min: int = 0
    patience: int = 50
    min_delta: float = 0.01
    ema_decay: float = 0.9
    n: int = -1
    ema: float | None = None
    best: float = -float("inf")
    since_best: int = 0

    def __post_init__(self):
        if self.n < 0:
            self.n = self.n_start

    def update(self, mean_reward: float) -> int:
        """Feed one step's mean reward; returns the (possibly lowered) n."""
        r = float(mean_reward)
        self.ema = r if self.ema is None else self.ema_decay * self.ema + (1 - self.ema_decay) * r
        if self.ema > self.best + self.min_delta:
            self.best, self.since_best = self.ema, 0
        else:
            self.since_best += 1
        if self.since_best >= self.patience and self.n > self.n_min:
            self.n -= 1
            self.since_best = 0
            self.best = -float("inf")  # the task changed: measure the plateau afresh
        return self.n

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["best"] = None if d["best"] == -float("inf") else d["best"]
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "RelaxationSchedule":
        d = json.loads(text)
        d["best"] = -float("inf") if d["best"] is None else d["best"]
        return cls(**d)
