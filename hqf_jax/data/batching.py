"""Deterministic batches: batch(step) is a pure function of (seed, step), so a resumed run sees
exactly the batches it would have seen.

A training example is a window w of ``seq_len`` bytes at a random offset of the split's stream;
the model reads [BOS, w[0], ..., w[T-2]] and predicts w[0..T-1]. Every window starts with BOS
(so prompts at generation time start the same way) and every byte of w is a target.
"""

from __future__ import annotations

import numpy as np

from hqf_jax.errors import DataError
from hqf_jax.ops.constants import BOS_ID


def to_example(windows: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 windows (B, T) -> int32 inputs (BOS-shifted) and targets (B, T)."""
    w = windows.astype(np.int32)
    inputs = np.concatenate([np.full((w.shape[0], 1), BOS_ID, np.int32), w[:, :-1]], axis=1)
    return {"inputs": inputs, "targets": w}


class WindowSampler:
    """Random windows from one byte stream, a pure function of (seed, step)."""

    def __init__(self, stream: np.ndarray, seq_len: int, batch_size: int, seed: int):
        if stream.dtype != np.uint8:
            raise TypeError("stream must be uint8")
        if len(stream) < seq_len + 1:
            raise DataError(f"the training split holds {len(stream)} bytes, fewer than one window of data.seq_len={seq_len}; "
                            "use more data or a shorter data.seq_len")
        self.stream, self.seq_len, self.batch_size, self.seed = stream, seq_len, batch_size, seed

    def starts(self, step: int, shard: int = 0, num_shards: int = 1) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.stream) - self.seq_len + 1, size=self.batch_size)
        per = self.batch_size // num_shards
        return starts[shard * per:(shard + 1) * per]

    def windows(self, step: int, shard: int = 0, num_shards: int = 1) -> np.ndarray:
        idx = self.starts(step, shard, num_shards)[:, None] + np.arange(self.seq_len)[None, :]
        return self.stream[idx]

    def __call__(self, step: int, shard: int = 0, num_shards: int = 1) -> dict[str, np.ndarray]:
        """The batch of ``step`` (or this process's rows of it, for multi-process runs)."""
        return to_example(self.windows(step, shard, num_shards))


def eval_windows(stream: np.ndarray, seq_len: int, max_bytes: int | None = None) -> np.ndarray:
    """Non-overlapping windows of a split; with ``max_bytes`` below its size, that many bytes' worth of
    windows spread evenly over the whole split (a prefix of a name-ordered split is one or two files,
    which can be unlike the rest, e.g. the stdlib's codec tables)."""
    total = len(stream) // seq_len
    if total == 0:
        raise DataError(f"the validation split holds {len(stream)} bytes, fewer than one window of {seq_len}; "
                        "use more data, a larger data.valid_fraction or a shorter data.seq_len")
    n = total if not max_bytes else max(1, min(total, max_bytes // seq_len))
    starts = np.linspace(0, total - 1, n).round().astype(np.int64) * seq_len
    return stream[starts[:, None] + np.arange(seq_len)[None, :]]
