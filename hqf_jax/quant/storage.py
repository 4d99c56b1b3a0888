"""Packed storage of a quantized pytree: one safetensors file of uint32 words (and kept leaves as raw bytes) plus
a JSON manifest. The data section of the safetensors file is exactly the accounted bits (tree_accounting):
file size = 8 + header length + accounted bytes.

    save_quantized(folder, qtree)  -> folder/weights.safetensors, folder/manifest.json
    qtree = load_quantized(folder)
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from hqf_jax.quant.qtensor import QTensor, manifest_entry, pack, unpack
from hqf_jax.pytree import path_str

WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
FORMAT = "hqf-quant-v1"


class QuantStorageError(ValueError):
    """A missing or inconsistent quantized checkpoint; the message names the file."""


def _key_repr(k) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)


def _raw_bytes(a: np.ndarray) -> tuple[np.ndarray, str]:
    """Kept leaves are stored as their raw bytes (uint8/16/32 views) so any dtype (bf16 included) round-trips."""
    a = np.asarray(a)
    view = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return np.ascontiguousarray(a).reshape(-1).view(view), str(a.dtype)


def save_quantized(folder: str, qtree) -> dict[str, Any]:
    """Write the packed tree and its manifest; returns the manifest."""
    os.makedirs(folder, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(qtree, is_leaf=lambda x: isinstance(x, QTensor))[0]:
        p = path_str(path)
        keys = [_key_repr(k) for k in path]
        if isinstance(leaf, QTensor):
            entry = manifest_entry(leaf)
            for name, words in pack(leaf).items():
                tensors[f"{p}::{name}"] = words
        else:
            raw, dtype = _raw_bytes(np.asarray(leaf))
            tensors[f"{p}::raw"] = raw
            entry = {"kind": "kept", "dtype": dtype, "shape": list(np.shape(leaf))}
        entry["path"] = keys
        entry["name"] = p
        leaves.append(entry)
    manifest = {"format": FORMAT, "leaves": leaves}
    save_file(tensors, os.path.join(folder, WEIGHTS))
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def data_bytes(path: str) -> int:
    """Bytes of a safetensors file after its 8-byte length and JSON header (the tensors themselves)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
    return os.path.getsize(path) - 8 - header_len


def _set(tree: dict, keys: list, value) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def load_quantized(folder: str):
    """The quantized tree as nested dicts (keys as saved), QTensor leaves for quantized weights."""
    wpath, mpath = os.path.join(folder, WEIGHTS), os.path.join(folder, MANIFEST)
    for p in (wpath, mpath):
        if not os.path.exists(p):
            raise QuantStorageError(f"{p} is missing: write the folder with hqf_jax.quant.storage.save_quantized")
    with open(mpath) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise QuantStorageError(f"{mpath}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    tensors = load_file(wpath)
    out: dict = {}
    for e in manifest["leaves"]:
        p = e["name"]
        if e["kind"] == "kept":
            raw = tensors[f"{p}::raw"]
            value = jnp.asarray(raw.view(jnp.dtype(e["dtype"])).reshape(e["shape"]))
        else:
            prefix = f"{p}::"
            packed = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            value = unpack(packed, e)
        _set(out, e["path"], value)
    return out
