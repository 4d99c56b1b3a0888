"""Count-based byte n-gram baseline: interpolated Kneser-Ney, vectorised with numpy.

Counts are kept as sorted int64 codes (context bytes and the next byte packed base 256), so
training is ``np.unique`` and a lookup is ``np.searchsorted``; there is no Python loop over
positions. Order n uses contexts of n - 1 bytes (n <= 7). Interpolated KN (Chen & Goodman):

    p_n(w | h) = max(c(h w) - D_n, 0) / c(h) + D_n N1+(h .) / c(h) * p_{n-1}(w | h')

with raw counts at the highest order and continuation counts N1+(. h w) below it, one
discount per order D = n1 / (n1 + 2 n2), and a uniform distribution under the unigram. A
context never seen at an order passes its whole mass to the next lower order.
"""

from __future__ import annotations

import numpy as np

MAX_ORDER = 7


def _codes(stream: np.ndarray, k: int) -> np.ndarray:
    """int64 code of every k-gram of the stream (k <= 8), first byte most significant."""
    n = len(stream) - k + 1
    code = np.zeros(n, np.int64)
    for i in range(k):
        code = code * 256 + stream[i : i + n].astype(np.int64)
    return code


class _Table:
    """Sorted unique codes with counts; ``get`` looks up many codes at once (0 when absent)."""

    def __init__(self, codes: np.ndarray, counts: np.ndarray):
        self.codes, self.counts = codes, counts

    def get(self, q: np.ndarray) -> np.ndarray:
        if len(self.codes) == 0:
            return np.zeros(q.shape, np.int64)
        i = np.minimum(np.searchsorted(self.codes, q), len(self.codes) - 1)
        return np.where(self.codes[i] == q, self.counts[i], 0)


def _grouped(codes: np.ndarray, counts: np.ndarray):
    """Per context (code // 256): total count and number of distinct next bytes."""
    ctx = codes // 256
    uctx, start = np.unique(ctx, return_index=True)
    total = np.add.reduceat(counts, start) if len(counts) else counts
    distinct = np.diff(np.append(start, len(codes)))
    return _Table(uctx, total), _Table(uctx, distinct)


class KneserNey:
    def __init__(self, order: int = 5):
        if not 1 <= order <= MAX_ORDER:
            raise ValueError(f"n-gram order must be in 1..{MAX_ORDER}, got {order}")
        self.order = order

    def fit(self, stream: np.ndarray) -> "KneserNey":
        stream = np.asarray(stream, np.uint8)
        self.tables, self.ctx_total, self.ctx_distinct, self.discount = {}, {}, {}, {}
        for k in range(1, self.order + 1):
            grams, cnt = np.unique(_codes(stream, k), return_counts=True)
            if k < self.order:
                # continuation counts: distinct left extensions of each k-gram
                ext = np.unique(_codes(stream, k + 1))
                grams, cnt = np.unique(ext % (256**k), return_counts=True)
            cnt = cnt.astype(np.int64)
            n1, n2 = np.sum(cnt == 1), np.sum(cnt == 2)
            self.discount[k] = float(n1 / (n1 + 2 * n2)) if n1 + n2 else 0.5
            self.tables[k] = _Table(grams, cnt)
            self.ctx_total[k], self.ctx_distinct[k] = _grouped(grams, cnt)
        return self

    def distribution(self, contexts: np.ndarray) -> np.ndarray:
        """(B, order - 1) uint8 contexts (most recent byte last) -> (B, 256) probabilities."""
        contexts = np.asarray(contexts, np.int64)
        b = contexts.shape[0]
        p = np.full((b, 256), 1.0 / 256)
        w = np.arange(256, dtype=np.int64)
        for k in range(1, self.order + 1):
            h = np.zeros(b, np.int64)
            for i in range(k - 1):
                h = h * 256 + contexts[:, contexts.shape[1] - (k - 1) + i]
            total = self.ctx_total[k].get(h).astype(np.float64)
            distinct = self.ctx_distinct[k].get(h).astype(np.float64)
            c = self.tables[k].get(h[:, None] * 256 + w[None, :]).astype(np.float64)
            d = self.discount[k]
            seen = total > 0
            safe = np.where(seen, total, 1.0)[:, None]
            pk = np.maximum(c - d, 0.0) / safe + (d * distinct)[:, None] / safe * p
            p = np.where(seen[:, None], pk, p)
        return p

    def evaluate(self, stream: np.ndarray, batch: int = 4096) -> dict:
        """Top-1 accuracy and bits per byte over every position with a full context."""
        stream = np.asarray(stream, np.uint8)
        n = self.order - 1
        correct, bits, count = 0, 0.0, 0
        for s in range(n, len(stream), batch):
            e = min(s + batch, len(stream))
            idx = np.arange(s, e)
            ctx = np.stack([stream[idx - n + i] for i in range(n)], axis=1) if n else np.zeros((e - s, 0), np.uint8)
            p = self.distribution(ctx)
            y = stream[s:e]
            correct += int(np.sum(np.argmax(p, axis=1) == y))
            bits += float(-np.sum(np.log2(p[np.arange(e - s), y])))
            count += e - s
        return dict(top1=correct / max(count, 1), bpb=bits / max(count, 1), n=count)
