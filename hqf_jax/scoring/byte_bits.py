"""Bits of every byte under a byte LM: a stream read in consecutive windows, or documents scored one by one."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hqf_jax.data.batching import to_example

LN2 = float(np.log(2.0))



@nnx.jit
def _nll(model, inputs, targets):
    return optax.softmax_cross_entropy_with_integer_labels(model(inputs), targets)


def per_byte_bits(model, stream: np.ndarray, seq_len: int, batch_size: int = 16) -> np.ndarray:
    """Bits of every byte of ``stream`` under the model, read as consecutive windows of ``seq_len``
    (each from BOS, as in training and eval.bpb); the last, shorter window is padded and masked.
    One jitted shape (batch_size, seq_len) for the whole stream."""
    stream = np.asarray(stream, np.uint8)
    n = len(stream)
    nw = -(-n // seq_len)
    nb = -(-nw // batch_size)
    padded = np.zeros(nb * batch_size * seq_len, np.uint8)
    padded[:n] = stream
    windows = padded.reshape(nb * batch_size, seq_len)
    out = []
    for i in range(nb):
        ex = to_example(windows[i * batch_size:(i + 1) * batch_size])
        out.append(np.asarray(_nll(model, jnp.asarray(ex["inputs"]), jnp.asarray(ex["targets"]))))
    return (np.concatenate(out).reshape(-1)[:n] / LN2).astype(np.float64)


def doc_bits(model, docs: list[bytes], batch_size: int = 32) -> np.ndarray:
    """(n_docs, max_len) bits per byte of each document scored on its own, from BOS (NaN past its end)."""
    width = max(len(d) for d in docs)
    rows = np.zeros((len(docs), width), np.uint8)
    for i, d in enumerate(docs):
        rows[i, :len(d)] = np.frombuffer(d, np.uint8)
    nb = -(-len(docs) // batch_size)
    rows_p = np.zeros((nb * batch_size, width), np.uint8)
    rows_p[: len(docs)] = rows
    out = []
    for i in range(nb):
        ex = to_example(rows_p[i * batch_size:(i + 1) * batch_size])
        out.append(np.asarray(_nll(model, jnp.asarray(ex["inputs"]), jnp.asarray(ex["targets"]))))
    bits = np.concatenate(out)[: len(docs)] / LN2
    lens = np.array([len(d) for d in docs])
    bits = bits.astype(np.float64)
    bits[np.arange(width)[None, :] >= lens[:, None]] = np.nan
    return bits
