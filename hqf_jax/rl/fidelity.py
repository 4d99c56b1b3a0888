"""Fidelity of a reconstruction d to a source s, on raw bytes (numpy, host side). 1 = identical.

* Edit fidelity: 1 - Levenshtein(s, d) / max(|s|, |d|) (unit costs for insert, delete, substitute).
* chrF (Popovic 2015, "chrF: character n-gram F-score for automatic MT evaluation", WMT, eq. 1):
  character n-gram precision chrP and recall chrR averaged arithmetically over n = 1..N, then
  chrF_beta = (1 + beta^2) chrP chrR / (beta^2 chrP + chrR), with N = 6 and beta = 2 by default.
  Here the "characters" are bytes and whitespace is kept (a reconstruction must get spaces right;
  sacrebleu's default strips them). Orders for which s or d has no n-gram are left out of the
  averages (the "effective order" of sacrebleu); returned in [0, 1], not x100.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Literal, Sequence

import numpy as np

FidelityKind = Literal["chrf", "edit", "mean"]


class FidelityError(ValueError):
    """A fidelity request that cannot work (the message names the fix)."""


def levenshtein(a: bytes, b: bytes) -> int:
    """Edit distance with unit costs; O(|a| |b|) work, one numpy row update per byte of a.

    The in-row insertion recurrence d[j] = min(tmp[j], d[j-1] + 1) is solved in closed form as
    d[j] = j + cummin_k<=j (tmp[k] - k).
    """
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    bv = np.frombuffer(b, np.uint8).astype(np.int64)
    idx = np.arange(len(b) + 1, dtype=np.int64)
    prev = idx.copy()
    for i, ch in enumerate(a, start=1):
        tmp = np.empty_like(prev)
        tmp[0] = i
        tmp[1:] = np.minimum(prev[1:] + 1, prev[:-1] + (bv != ch))  # deletion, substitution
        prev = idx + np.minimum.accumulate(tmp - idx)  # insertion
    return int(prev[-1])


def edit_fidelity(s: bytes, d: bytes) -> float:
    """1 - normalised edit distance, in [0, 1]; 1.0 when both are empty."""
    n = max(len(s), len(d))
    return 1.0 if n == 0 else 1.0 - levenshtein(s, d) / n


def _ngrams(x: bytes, n: int) -> Counter:
    return Counter(x[i:i + n] for i in range(len(x) - n + 1))


def chrf(s: bytes, d: bytes, n_order: int = 6, beta: float = 2.0) -> float:
    """chrF of hypothesis d against reference s on bytes (see module docstring), in [0, 1]."""
    if not s and not d:
        return 1.0
    precs, recs = [], []
    for n in range(1, n_order + 1):
        ref, hyp = _ngrams(s, n), _ngrams(d, n)
        n_ref, n_hyp = sum(ref.values()), sum(hyp.values())
        if n_ref == 0 or n_hyp == 0:
            continue
        match = sum((ref & hyp).values())
        precs.append(match / n_hyp)
        recs.append(match / n_ref)
    if not precs:
        return 0.0
    p, r = sum(precs) / len(precs), sum(recs) / len(recs)
    if p == 0.0 and r == 0.0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * p * r / (b2 * p + r)


def fidelity(s: bytes, d: bytes, kind: FidelityKind = "chrf") -> float:
    """The verifier's default score: 'chrf', 'edit', or 'mean' (the average of the two)."""
    if kind == "chrf":
        return chrf(s, d)
    if kind == "edit":
        return edit_fidelity(s, d)
    if kind == "mean":
        return 0.5 * (chrf(s, d) + edit_fidelity(s, d))
    raise FidelityError(f"fidelity kind {kind!r}: use 'chrf', 'edit' or 'mean'")


def batch_fidelity(sources: Sequence[bytes], recons: Sequence[bytes], kind: FidelityKind = "chrf") -> np.ndarray:
    """fidelity over aligned lists -> (B,) float32."""
    if len(sources) != len(recons):
        raise FidelityError(f"{len(sources)} sources but {len(recons)} reconstructions: pass aligned lists")
    return np.array([fidelity(s, d, kind) for s, d in zip(sources, recons)], np.float32)


def fidelity_fn(kind: FidelityKind) -> Callable[[bytes, bytes], float]:
    """The scoring function for a kind, checked once."""
    fidelity(b"", b"", kind)
    return lambda s, d: fidelity(s, d, kind)
