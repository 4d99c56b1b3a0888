"""Where the compressor's sources s come from; each is a function (rng, n) -> n byte strings.

* ``repeat``: a small structured task: a random unit of ``unit_len`` bytes drawn from ``alphabet``,
  repeated (and cut) to ``length`` bytes. Its shortest description is the unit plus the length,
  so a code much shorter than s can reconstruct it exactly.
* ``words``: random sequences of the words of ``rl.words`` (what a dictionary codec compresses well).
* ``corpus``: windows of ``length`` bytes from a byte corpus (hqf_jax.data: stdlib or files).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from hqf_jax.errors import ConfigError

SourceFn = Callable[[np.random.Generator, int], list[bytes]]


def repeat_source(alphabet: bytes, unit_len: int, length: int) -> SourceFn:
    if not alphabet or unit_len < 1 or length < 1:
        raise ConfigError("rl.source=repeat needs a non-empty rl.alphabet, rl.unit_len >= 1 and rl.source_len >= 1")
    alpha = np.frombuffer(alphabet, np.uint8)

    def draw(rng: np.random.Generator, n: int) -> list[bytes]:
        out = []
        for _ in range(n):
            unit = bytes(rng.choice(alpha, size=unit_len).tolist())
            out.append((unit * (length // unit_len + 1))[:length])
        return out

    return draw


def words_source(words: list[bytes], length: int) -> SourceFn:
    """Random words of a small vocabulary joined by spaces, cut to ``length`` bytes (the codec's easy case)."""
    if not words or length < 1:
        raise ConfigError("rl.source=words needs a non-empty rl.words and rl.source_len >= 1")

    def draw(rng: np.random.Generator, n: int) -> list[bytes]:
        out = []
        for _ in range(n):
            text = b""
            while len(text) < length:
                text += words[int(rng.integers(len(words)))] + b" "
            out.append(text[:length])
        return out

    return draw


def corpus_source(stream: np.ndarray, length: int) -> SourceFn:
    if len(stream) <= length:
        raise ConfigError(f"the corpus split has {len(stream)} bytes, fewer than rl.source_len={length}: "
                          "use more data or shorter sources")

    def draw(rng: np.random.Generator, n: int) -> list[bytes]:
        starts = rng.integers(0, len(stream) - length, size=n)
        return [stream[s:s + length].tobytes() for s in starts]

    return draw


def make_source(rl_cfg, data_cfg=None, split: str = "train") -> SourceFn:
    """The source a config names: rl.source in ('repeat', 'corpus')."""
    if rl_cfg.source == "repeat":
        return repeat_source(rl_cfg.alphabet.encode(), rl_cfg.unit_len, rl_cfg.source_len)
    if rl_cfg.source == "words":
        return words_source(rl_cfg.words.encode().split(), rl_cfg.source_len)
    if rl_cfg.source == "corpus":
        if data_cfg is None:
            raise ConfigError("rl.source=corpus needs a data section (data.source=stdlib or files)")
        from hqf_jax.data.catalog import load_corpus

        return corpus_source(load_corpus(data_cfg).stream(split), rl_cfg.source_len)
    raise ConfigError(f"rl.source={rl_cfg.source!r}: use 'repeat' or 'words' (synthetic) or 'corpus' (data section)")
