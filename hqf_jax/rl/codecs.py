"""Simple codecs that give the Kolmogorov policy a code language before RL (the warm start, issue 17 item 1).

A :class:`Codec` is a fixed dictionary of frequent words; ``encode`` scans the source once and emits, at each
position, the first of:

  * a run of >= ``RUN_MIN`` equal bytes   -> ``RUN, byte, count``           (run-length; count <= 255)
  * a dictionary word                     -> its one-byte code (0x01..0x19, not TAB/LF/CR)
  * a reserved byte (a code, RUN or ESC)  -> ``ESC, byte``                   (literal escape)
  * any other byte                        -> itself

``decode`` inverts it exactly. With ``shorthand=True`` the source is first abbreviated (lowercase vowels dropped
from the inside of words of >= 5 letters): lossy, the decompressor must guess them back.
"""

from __future__ import annotations

import re
from collections import Counter

RUN = 0x1A
ESC = 0x1B
RUN_MIN = 4
CODE_BYTES = tuple(b for b in range(0x01, RUN) if b not in (0x09, 0x0A, 0x0D))  # 22 one-byte word codes
RESERVED = frozenset(CODE_BYTES) | {RUN, ESC}
_WORD = re.compile(rb"[A-Za-z_]{3,}")
_LONG_WORD = re.compile(rb"[A-Za-z_]{5,}")
_VOWELS = frozenset(b"aeiou")


class CodecError(ValueError):
    """A codec that cannot work (the message names the fix)."""


def build_dictionary(text: bytes, n: int = len(CODE_BYTES)) -> tuple[bytes, ...]:
    """The n words (>= 3 letters) of ``text`` that save the most bytes: count x (len - 1); ties by word."""
    if n > len(CODE_BYTES):
        raise CodecError(f"a dictionary of {n} words: at most {len(CODE_BYTES)} one-byte codes exist")
    counts = Counter(_WORD.findall(text))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1] * (len(kv[0]) - 1), kv[0]))
    return tuple(w for w, _ in ranked[:n])


def shorthand(s: bytes) -> bytes:
    """Drop lowercase vowels from the inside of every word of >= 5 letters (first and last letters kept)."""
    def cut(m: re.Match) -> bytes:
        w = m.group(0)
        return w[:1] + bytes(c for c in w[1:-1] if c not in _VOWELS) + w[-1:]
    return _LONG_WORD.sub(cut, s)


class Codec:
    """Dictionary substitution + run-length + escapes (lossless), optional shorthand (lossy)."""

    def __init__(self, words: tuple[bytes, ...]):
        if len(words) > len(CODE_BYTES):
            raise CodecError(f"{len(words)} words but only {len(CODE_BYTES)} one-byte codes")
        if any(not w or any(b in RESERVED for b in w) for w in words):
            raise CodecError("dictionary words must be non-empty and hold no reserved byte (0x01..0x1B)")
        self.words = tuple(words)
        self.code_of = {w: CODE_BYTES[i] for i, w in enumerate(words)}
        self.word_of = {CODE_BYTES[i]: w for i, w in enumerate(words)}
        self.lengths = sorted({len(w) for w in words}, reverse=True)

    def encode(self, s: bytes, shorthand_first: bool = False) -> bytes:
        if shorthand_first:
            s = shorthand(s)
        out = bytearray()
        i, n = 0, len(s)
        while i < n:
            b = s[i]
            j = i
            while j < n and s[j] == b and j - i < 255:
                j += 1
            if j - i >= RUN_MIN:
                out += bytes((RUN, b, j - i))
                i = j
                continue
            for L in self.lengths:
                code = self.code_of.get(s[i:i + L])
                if code is not None:
                    out.append(code)
                    i += L
                    break
            else:
                if b in RESERVED:
                    out.append(ESC)
                out.append(b)
                i += 1
        return bytes(out)

    def decode(self, code: bytes) -> bytes:
        """The inverse of ``encode`` (without shorthand); a truncated marker at the end is dropped."""
        out = bytearray()
        i, n = 0, len(code)
        while i < n:
            b = code[i]
            if b == RUN:
                if i + 2 >= n:
                    break
                out += bytes([code[i + 1]]) * code[i + 2]
                i += 3
            elif b == ESC:
                if i + 1 >= n:
                    break
                out.append(code[i + 1])
                i += 2
            elif b in self.word_of:
                out += self.word_of[b]
                i += 1
            else:
                out.append(b)
                i += 1
        return bytes(out)

    def to_json(self) -> list[str]:
        return [w.hex() for w in self.words]

    @classmethod
    def from_json(cls, words: list[str]) -> "Codec":
        return cls(tuple(bytes.fromhex(w) for w in words))
