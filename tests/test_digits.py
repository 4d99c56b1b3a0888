"""Digits path: header + PGM documents round-trip, the held-out class never reaches training."""

import ml_collections
import numpy as np
import pytest

from hqf_jax.data import digits
from hqf_jax.data.catalog import load_corpus
from hqf_jax.errors import DataError


def test_document_format_round_trips_and_is_a_pgm():
    img = np.arange(64).reshape(8, 8) % 17
    doc = digits.encode_image(3, img)
    assert doc.startswith(b"digit 3\nP5\n8 8\n16\n") and len(doc) == len(b"digit 3\n") + 10 + 64
    label, back = digits.decode_image(doc)
    assert label == 3 and np.array_equal(back, img)
    pgm = doc[len(b"digit 3\n"):]  # what any image reader sees: a valid binary PGM
    assert pgm.split(b"\n")[:3] == [b"P5", b"8 8", b"16"]
    assert digits.decode_image(doc[:40]) == (3, None)  # truncated
    assert digits.decode_image(b"garbage") == (None, None)
    assert digits.pixel_errors(bytes([0, 16, 17, 255] + [0] * 60)) == 2
    with pytest.raises(ValueError):
        digits.encode_image(1, np.full((8, 8), 17))


def test_heldout_class_is_absent_from_training_and_validation():
    cfg = ml_collections.ConfigDict(dict(source="digits", holdout_class=7, valid_fraction=0.1))
    corpus = load_corpus(cfg)
    held = digits.heldout_class_docs(cfg)
    train_stream = corpus.stream("train").tobytes()
    assert b"digit 7\n" not in train_stream and b"digit 7\n" not in corpus.stream("valid").tobytes()
    assert len(held) == 179 and all(d.startswith(b"digit 7\n") for _, d in held)
    assert len(corpus.train) + len(corpus.valid) + len(held) == 1797
    seen = {digits.decode_image(d)[0] for _, d in corpus.valid}
    assert seen == set(range(10)) - {7}
    assert 0.05 < len(corpus.valid) / (len(corpus.train) + len(corpus.valid)) < 0.15
    with pytest.raises(DataError, match="0..9"):
        digits.load_digits_corpus(12)
