"""Zip-space: zlib and LZ77 encoders/decoders round-trip, broken streams are caught, prefixes line up."""

import zlib

import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hqf_jax.data import zipspace as z
from hqf_jax.data.catalog import load_corpus
from hqf_jax.errors import DataError

TEXT = (b"def spam(x):\n    return x + x  # spam spam spam\n" * 20) + bytes(range(256))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([0, 1, 7, 64]))
def test_round_trip_any_bytes(data, flush):
    s = z.lz77_encode(data)
    d = z.lz77_decode(s)
    assert d.ok and d.complete and d.data == data and len(s) % 4 == 0
    zs = z.zlib_encode(data, flush)
    assert zlib.decompress(zs) == data and z.zlib_decode(zs).complete


def test_lz77_hand_example_and_overlapping_match():
    s = z.lz77_encode(b"abcabcabcX")
    # literal a, b, c; then a match 3 back of length 6 (overlapping itself) followed by X
    assert s == b"LZ77" + bytes([0, 0, 0, 97, 0, 0, 0, 98, 0, 0, 0, 99, 0, 3, 6, 88])
    assert z.lz77_decode(s).data == b"abcabcabcX"
    assert len(z.lz77_encode(TEXT)) < len(TEXT)  # repetitive text compresses even with 4-byte triples


def test_broken_streams_are_reported_not_raised():
    s = z.lz77_encode(TEXT)
    cut = z.lz77_decode(s[:-2])
    assert cut.ok and not cut.complete and "truncated" in cut.error
    bad = bytearray(s)
    bad[4:8] = bytes([0xFF, 0xFF, 5, 0])  # a match reaching before the start of the output
    assert not z.lz77_decode(bytes(bad)).ok
    assert not z.lz77_decode(b"nope").ok
    zs = z.zlib_encode(TEXT, 64)
    t = z.zlib_decode(zs[:-6])
    assert t.ok and not t.complete and TEXT.startswith(t.data) and len(t.data) > 0
    corrupt = bytearray(zs)
    corrupt[2] ^= 0xFF
    c = z.zlib_decode(bytes(corrupt))
    assert not c.ok and c.error


def test_sync_flushed_prefix_is_the_start_of_the_stream():
    full = z.zlib_encode(TEXT, 128)
    for k in (1, 3, 5):
        p = z.zlib_prefix(TEXT, 128, k)
        assert full.startswith(p) and p.endswith(z.SYNC_MARK)
        assert zlib.decompressobj().decompress(p) == TEXT[: 128 * k]


def test_zip_source_streams_decode_to_their_text():
    cfg = ml_collections.ConfigDict(dict(source="zip", format="zlib", text_source="stdlib", valid_fraction=0.1,
                                         max_files=6, doc_bytes=1024, flush_every=256))
    corpus, text = z.load_zipspace(cfg)
    assert len(corpus.train) == len(text.train) > 0
    for (n1, s), (n2, t) in zip(corpus.train + corpus.valid, text.train + text.valid):
        assert n1 == n2 and zlib.decompress(s) == t and s.startswith(z.ZLIB_MAGIC)
    cfg.format = "lz77"
    lz = load_corpus(cfg)
    assert all(s.startswith(b"LZ77") for _, s in lz.train)
    cfg.format = "bzip"
    with pytest.raises(DataError, match="formats"):
        load_corpus(cfg)
    raw = np.frombuffer(b"".join(t for _, t in text.train), np.uint8)
    cfg.format = "raw"
    assert np.array_equal(load_corpus(cfg).stream("train"), raw)
