"""Zip-space: a text corpus seen as compressed streams, in two formats, with encoders and decoders.

``zlib``: each document is a zlib stream (RFC 1950 header ``78 DA``, DEFLATE blocks, Adler-32).
With ``flush_every`` > 0 the compressor is sync-flushed after every ``flush_every`` input bytes,
so the stream is cut into byte-aligned segments (each ends with the empty stored block
``00 00 FF FF``); the compressed prefix of a document's first segments is then a valid place to
stop and let the model continue (the in-context test), and training streams look the same.

``lz77``: a byte-aligned LZ77 token format, the easier zip-space. A stream is the magic ``LZ77``
then triples (offset: u16 big-endian, length: u8, next: u8): copy ``length`` bytes starting
``offset`` back in the output, then emit the literal ``next``. ``(0, 0, c)`` is a bare literal.
Matches are 3..255 bytes within a 65,535-byte window, found greedily with hash chains.

``raw``: the same text chunks unencoded, for the bpb of the raw text under an equal model.

Documents are chunks of ``doc_bytes`` of each text file (the stdlib by default), split into
train/validation by file name like every other source. Every encoded stream is decoded again at
load time; a chunk whose round trip fails is skipped and counted.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from hqf_jax.data import registry, sources  # noqa: F401  (sources: the text sources stdlib and files are always registered)
from hqf_jax.data.corpus import ByteCorpus
from hqf_jax.data.registry import register
from hqf_jax.errors import DataError

FORMATS = ("zlib", "lz77", "raw")
LZ_MAGIC = b"LZ77"
ZLIB_MAGIC = b"\x78\xda"  # zlib header at level 9
SYNC_MARK = b"\x00\x00\xff\xff"
MIN_MATCH, MAX_MATCH, WINDOW = 3, 255, 65535


class StreamError(ValueError):
    """A stream that does not decode (truncated, corrupt, or not of the format)."""


# ------------------------------------------------------------------------------------------- zlib


def zlib_encode(text: bytes, flush_every: int = 0, level: int = 9) -> bytes:
    c = zlib.compressobj(level)
    if flush_every <= 0:
        return c.compress(text) + c.flush()
    out = [c.compress(text[i:i + flush_every]) + c.flush(zlib.Z_SYNC_FLUSH) for i in range(0, len(text), flush_every)]
    return b"".join(out) + c.flush()


def zlib_prefix(text: bytes, flush_every: int, segments: int, level: int = 9) -> bytes:
    """The compressed stream of ``text``'s first ``segments`` flush segments: byte for byte the start
    of ``zlib_encode(text, flush_every)``, ending at a sync flush (not a final block)."""
    c = zlib.compressobj(level)
    return b"".join(c.compress(text[i:i + flush_every]) + c.flush(zlib.Z_SYNC_FLUSH)
                    for i in range(0, min(len(text), segments * flush_every), flush_every))


@dataclass
class Decoded:
    data: bytes  # what decoded before the stream ended or broke
    ok: bool  # no error in the bytes given
    complete: bool  # reached the stream's proper end (zlib: final block and checksum; lz77: whole triples)
    used: int = 0  # stream bytes consumed up to the proper end (or all when incomplete)
    error: str = ""


def zlib_decode(stream: bytes) -> Decoded:
    """Decode as much of a zlib stream as its bytes allow, never raising."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(stream)
    except zlib.error as e:
        # decode the longest prefix that still decodes, to report what came out before the error
        lo, hi = 0, len(stream)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            try:
                zlib.decompressobj().decompress(stream[:mid])
                lo = mid
            except zlib.error:
                hi = mid - 1
        return Decoded(zlib.decompressobj().decompress(stream[:lo]), False, False, lo, str(e))
    if d.eof:
        return Decoded(out, True, True, len(stream) - len(d.unused_data))
    return Decoded(out, True, False, len(stream), "stream ends before its final block")


# ------------------------------------------------------------------------------------------- lz77


def lz77_encode(text: bytes, max_chain: int = 16) -> bytes:
    """Greedy LZ77 triples with hash chains over 3-byte prefixes (deterministic)."""
    n = len(text)
    out = bytearray(LZ_MAGIC)
    heads: dict[bytes, list[int]] = {}
    i = 0

    def remember(j):
        if j + MIN_MATCH <= n:
            lst = heads.setdefault(text[j:j + MIN_MATCH], [])
            lst.append(j)
            if len(lst) > max_chain:
                del lst[0]

    while i < n:
        best_len, best_off = 0, 0
        limit = min(MAX_MATCH, n - 1 - i)  # always leave a next literal
        if limit >= MIN_MATCH:
            for j in reversed(heads.get(text[i:i + MIN_MATCH], ())):
                if i - j > WINDOW:
                    break
                k = MIN_MATCH
                while k < limit and text[j + k] == text[i + k]:
                    k += 1
                if k > best_len:
                    best_len, best_off = k, i - j
                    if k == limit:
                        break
        if best_len < MIN_MATCH:
            best_len, best_off = 0, 0
        out += bytes((best_off >> 8, best_off & 0xFF, best_len, text[i + best_len]))
        for j in range(i, i + best_len + 1):
            remember(j)
        i += best_len + 1
    return bytes(out)


def lz77_decode(stream: bytes) -> Decoded:
    if not stream.startswith(LZ_MAGIC):
        return Decoded(b"", False, False, 0, "no LZ77 magic")
    out = bytearray()
    pos = len(LZ_MAGIC)
    while pos + 4 <= len(stream):
        off, length, nxt = (stream[pos] << 8) | stream[pos + 1], stream[pos + 2], stream[pos + 3]
        if length and (off == 0 or off > len(out) or length < MIN_MATCH):
            return Decoded(bytes(out), False, False, pos, f"bad match (offset {off}, length {length}) at byte {pos}")
        if not length and off:
            return Decoded(bytes(out), False, False, pos, f"offset {off} without a match length at byte {pos}")
        start = len(out) - off
        for k in range(length):  # byte by byte: a match may overlap its own output
            out.append(out[start + k])
        out.append(nxt)
        pos += 4
    tail = len(stream) - pos
    return Decoded(bytes(out), True, tail == 0, pos, f"{tail} bytes of a truncated triple" if tail else "")


# ------------------------------------------------------------------------------------------- corpus


def encode(fmt: str, text: bytes, flush_every: int = 0) -> bytes:
    if fmt == "zlib":
        return zlib_encode(text, flush_every)
    if fmt == "lz77":
        return lz77_encode(text)
    if fmt == "raw":
        return text
    raise DataError(f"data.format={fmt!r}: zip-space formats are {list(FORMATS)}")


def decode(fmt: str, stream: bytes) -> Decoded:
    if fmt == "zlib":
        return zlib_decode(stream)
    if fmt == "lz77":
        return lz77_decode(stream)
    return Decoded(stream, True, True, len(stream))


def stream_start(fmt: str) -> bytes:
    """What every stream of the format begins with (the prompt for unconditional generation)."""
    return {"zlib": ZLIB_MAGIC, "lz77": LZ_MAGIC, "raw": b""}[fmt]


def chunk_docs(docs: list[tuple[str, bytes]], doc_bytes: int) -> list[tuple[str, bytes]]:
    out = []
    for name, data in docs:
        for k, i in enumerate(range(0, len(data), doc_bytes)):
            piece = data[i:i + doc_bytes]
            if len(piece) >= doc_bytes // 4:  # a short tail is too small to be a document
                out.append((f"{name}#{k:04d}", piece))
    return out


def text_corpus(cfg) -> ByteCorpus:
    """The text the streams encode, chunked: ``cfg.text_source`` is any other registered source."""
    inner = cfg.get("text_source", "stdlib")
    if inner == "zip":
        raise DataError("data.text_source must name a text source (stdlib, files), not zip")
    text = registry.get(inner, "data.text_source")(cfg)
    n = int(cfg.get("doc_bytes", 2048))
    return ByteCorpus(chunk_docs(text.train, n), chunk_docs(text.valid, n), text.description, text.skipped)


def encode_docs(fmt: str, docs: list[tuple[str, bytes]], flush_every: int) -> tuple[list[tuple[str, bytes]], int]:
    """(encoded documents, skipped): every stream is decoded back and must give its text."""
    out, skipped = [], 0
    for name, text in docs:
        stream = encode(fmt, text, flush_every)
        back = decode(fmt, stream)
        if not (back.ok and back.complete and back.data == text):
            skipped += 1
            continue
        out.append((name, stream))
    return out, skipped


def load_zipspace(cfg) -> tuple[ByteCorpus, ByteCorpus]:
    """(stream corpus, the text corpus it encodes), documents in the same order."""
    fmt = cfg.get("format", "zlib")
    if fmt not in FORMATS:
        raise DataError(f"data.format={fmt!r}: zip-space formats are {list(FORMATS)}")
    text = text_corpus(cfg)
    flush = int(cfg.get("flush_every", 0))
    train, s1 = encode_docs(fmt, text.train, flush)
    valid, s2 = encode_docs(fmt, text.valid, flush)
    if s1 + s2:
        print(f"[zip] skipped {s1 + s2} chunks whose {fmt} stream did not decode back to the text")
    keep_t, keep_v = {n for n, _ in train}, {n for n, _ in valid}
    text = ByteCorpus([d for d in text.train if d[0] in keep_t], [d for d in text.valid if d[0] in keep_v],
                      text.description, text.skipped)
    desc = f"zip-space {fmt}" + (f" (sync flush every {flush} bytes)" if fmt == "zlib" and flush else "") \
        + f" of {text.description} in {cfg.get('doc_bytes', 2048)}-byte chunks"
    return ByteCorpus(train, valid, desc, text.skipped + s1 + s2), text


@register("zip")
def _zip_source(cfg) -> ByteCorpus:
    return load_zipspace(cfg)[0]
