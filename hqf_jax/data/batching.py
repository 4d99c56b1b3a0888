"""Deterministic batches: batch(step) is a pure function of (seed, step), so a resumed run sees
exactly the batches it would have seen.

A training example is a window w of ``seq_len`` bytes at a random offset of the split's stream;
the model reads [BOS, w[0], ..., w[T-2]] and predicts w[0..T-1]. Every window starts with BOS
(so prompts at generation time start the same way) and every byte of w is a target.

The stream may be a read-only memmap of a byte store: each window is one slice of it, so a batch
reads batch_size x seq_len bytes and nothing else of the corpus. In a multi-process run each
process reads only its rows of the global batch (``WindowSampler.read_only_rows``).
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


def read_windows(stream: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    """uint8 (len(starts), seq_len): one slice of the stream per window (no index array of B x T)."""
    out = np.empty((len(starts), seq_len), np.uint8)
    for i, s in enumerate(starts):
        out[i] = stream[s:s + seq_len]
    return out


class WindowSampler:
    """Random windows from one byte stream (an array or a memmap), a pure function of (seed, step)."""

    def __init__(self, stream: np.ndarray, seq_len: int, batch_size: int, seed: int):
        if stream.dtype != np.uint8:
            raise TypeError("stream must be uint8")
        if len(stream) < seq_len + 1:
            raise DataError(f"the training split holds {len(stream)} bytes, fewer than one window of data.seq_len={seq_len}; "
                            "use more data or a shorter data.seq_len")
        self.stream, self.seq_len, self.batch_size, self.seed = stream, seq_len, batch_size, seed
        self.rows: np.ndarray | None = None  # the global rows this process reads (None: all)

    def starts(self, step: int, shard: int = 0, num_shards: int = 1) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.stream) - self.seq_len + 1, size=self.batch_size)
        per = self.batch_size // num_shards
        return starts[shard * per:(shard + 1) * per]

    def windows(self, step: int, shard: int = 0, num_shards: int = 1) -> np.ndarray:
        return read_windows(self.stream, self.starts(step, shard, num_shards), self.seq_len)

    def read_only_rows(self, rows) -> None:
        """From now on read only these rows of each global batch (the rows this process's devices
        hold); ``__call__`` still returns the global shape, the other rows zero."""
        self.rows = None if rows is None else np.asarray(rows, np.int64)

    def __call__(self, step: int, shard: int = 0, num_shards: int = 1) -> dict[str, np.ndarray]:
        """The batch of ``step`` (or shard ``shard`` of ``num_shards``); with ``read_only_rows`` set,
        the global batch with only this process's rows read."""
        if self.rows is None or num_shards != 1:
            return to_example(self.windows(step, shard, num_shards))
        local = to_example(read_windows(self.stream, self.starts(step)[self.rows], self.seq_len))
        out = {k: np.zeros((self.batch_size, self.seq_len), np.int32) for k in local}
        for k, v in local.items():
            out[k][self.rows] = v
        return out


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
    return read_windows(stream, starts, seq_len)
