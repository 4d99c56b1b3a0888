"""Images with a held-out class: scikit-learn's 8x8 digits as bytes, ``b"digit 7\\n"`` + a binary PGM.

Each image is one document: a text header naming the class, then a standard binary PGM
(``P5``, width, height, maxval 16 as in the data set, 64 pixel bytes in 0..16), so any image
viewer reads the part after the first line. The header comes first so a prompt ``digit k\\n``
plus the fixed PGM header asks the model to draw class k.

One class (``data.holdout_class``) is left out of training entirely. Of the other classes, a
deterministic share of images (by a hash of the image index, ``data.valid_fraction``) is held
out as the validation split; ``heldout_class_docs`` gives the images of the held-out class.
"""

from __future__ import annotations

import numpy as np

from hqf_jax.data.corpus import ByteCorpus, is_valid_name
from hqf_jax.data.registry import register
from hqf_jax.errors import DataError

SIDE = 8
MAXVAL = 16
PGM_HEADER = f"P5\n{SIDE} {SIDE}\n{MAXVAL}\n".encode()
NUM_CLASSES = 10


def class_header(label: int) -> bytes:
    return f"digit {int(label)}\n".encode()


def prompt(label: int) -> bytes:
    """The bytes that ask for an image of ``label``: its header and the PGM header."""
    return class_header(label) + PGM_HEADER


def encode_image(label: int, image: np.ndarray) -> bytes:
    img = np.asarray(image)
    if img.shape != (SIDE, SIDE) or img.min() < 0 or img.max() > MAXVAL:
        raise ValueError(f"expected an {SIDE}x{SIDE} image with values 0..{MAXVAL}, got shape {img.shape}")
    return prompt(label) + np.rint(img).astype(np.uint8).tobytes()


def decode_image(doc: bytes) -> tuple[int | None, np.ndarray | None]:
    """(label, 8x8 uint8 image) of a document; None parts where it is malformed. Pixels above the
    maxval are clipped to it (a generated image may hold such bytes; ``pixel_errors`` counts them)."""
    nl = doc.find(b"\n")
    label = None
    if nl > 0 and doc[:nl].startswith(b"digit "):
        try:
            label = int(doc[6:nl])
        except ValueError:
            label = None
    rest = doc[nl + 1:] if nl >= 0 else b""
    if not rest.startswith(PGM_HEADER) or len(rest) < len(PGM_HEADER) + SIDE * SIDE:
        return label, None
    px = np.frombuffer(rest[len(PGM_HEADER): len(PGM_HEADER) + SIDE * SIDE], np.uint8)
    return label, np.minimum(px, MAXVAL).reshape(SIDE, SIDE)


def pixel_errors(pixels: bytes) -> int:
    """How many of the 64 pixel bytes lie outside 0..maxval."""
    return int((np.frombuffer(pixels[: SIDE * SIDE], np.uint8) > MAXVAL).sum())


def load_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) uint8 in 0..16, labels (1797,) int) from scikit-learn's bundled copy."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.uint8), d.target.astype(np.int64)


def _docs(images, labels, idx):
    return [(f"digit{int(labels[i])}-{int(i):04d}", encode_image(int(labels[i]), images[i])) for i in idx]


def split_indices(labels: np.ndarray, holdout_class: int, valid_fraction: float):
    """(train, valid of seen classes, held-out class) image indices."""
    held = [i for i in range(len(labels)) if labels[i] == holdout_class]
    seen = [i for i in range(len(labels)) if labels[i] != holdout_class]
    valid = [i for i in seen if is_valid_name(f"digits:{i}", valid_fraction)]
    train = [i for i in seen if not is_valid_name(f"digits:{i}", valid_fraction)]
    return train, valid, held


def load_digits_corpus(holdout_class: int = 7, valid_fraction: float = 0.1) -> tuple[ByteCorpus, list[tuple[str, bytes]]]:
    """(corpus of seen classes, documents of the held-out class)."""
    if not -1 <= holdout_class < NUM_CLASSES:
        raise DataError(f"data.holdout_class={holdout_class}: pick a class 0..9 (or -1 to hold none out)")
    images, labels = load_arrays()
    bad = [i for i in range(len(labels)) if images[i].max() > MAXVAL or images[i].shape != (SIDE, SIDE)]
    if bad:
        print(f"[digits] skipped {len(bad)} images outside 0..{MAXVAL}")
    keep = np.ones(len(labels), bool)
    keep[bad] = False
    train, valid, held = split_indices(np.where(keep, labels, -99), holdout_class, valid_fraction)
    desc = f"sklearn digits as 'digit k' + PGM, class {holdout_class} held out ({len(held)} images)"
    corpus = ByteCorpus(_docs(images, labels, train), _docs(images, labels, valid), desc, len(bad))
    return corpus, _docs(images, labels, held)


def heldout_class_docs(cfg) -> list[tuple[str, bytes]]:
    return load_digits_corpus(int(cfg.holdout_class), float(cfg.valid_fraction))[1]


@register("digits")
def _digits_source(cfg) -> ByteCorpus:
    return load_digits_corpus(int(cfg.get("holdout_class", 7)), float(cfg.valid_fraction))[0]
