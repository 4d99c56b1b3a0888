"""In-memory documents: ``ByteCorpus`` (train/valid lists of (name, bytes)) and the split rule.

The split is a deterministic function of each document's name: a document goes to validation when
the first 8 bytes of sha256(name) fall below ``valid_fraction`` of 2^64, so adding documents never
moves another one across the split. Small sources (music, digits, zip-space) build a ByteCorpus;
files, the stdlib and HF-format data go to the memory-mapped ``ByteStore`` (hqf_jax.data.store),
which has the same interface.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterable

import numpy as np


@dataclasses.dataclass
class ByteCorpus:
    train: list[tuple[str, bytes]]
    valid: list[tuple[str, bytes]]
    description: str = ""
    skipped: int = 0  # documents dropped as unreadable or invalid, always reported

    def stream(self, split: str) -> np.ndarray:
        """All documents of a split concatenated, in name order, as uint8."""
        docs = self.train if split == "train" else self.valid
        return np.frombuffer(b"".join(d for _, d in docs), dtype=np.uint8)

    def reader(self, split: str) -> np.ndarray:
        """The split for the window sampler (``ByteStore.reader`` reads from disk instead)."""
        return self.stream(split)

    def summary(self) -> str:
        nt, nv = sum(len(d) for _, d in self.train), sum(len(d) for _, d in self.valid)
        s = f"{self.description}: {len(self.train)} train docs ({nt:,} bytes), {len(self.valid)} valid docs ({nv:,} bytes)"
        return s + (f", {self.skipped} skipped" if self.skipped else "")


def is_valid_name(name: str, valid_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()[:8], "big")
    return h < valid_fraction * 2**64


def split_documents(docs: Iterable[tuple[str, bytes]], valid_fraction: float, description: str = "", skipped: int = 0) -> ByteCorpus:
    """Deterministic split by document name. With fewer than two documents, or when the hash puts
    every document on one side, the last ``valid_fraction`` of the bytes becomes validation."""
    docs = sorted(docs)
    train = [d for d in docs if not is_valid_name(d[0], valid_fraction)]
    valid = [d for d in docs if is_valid_name(d[0], valid_fraction)]
    if not train or not valid:
        data = b"".join(d for _, d in docs)
        cut = int(len(data) * (1 - valid_fraction))
        train, valid = [("train-part", data[:cut])], [("valid-part", data[cut:])]
    return ByteCorpus(train, valid, description, skipped)
