"""Lazy safetensors loading of a Hugging Face checkpoint folder into `HFDecoderLM`.

Only safetensors are read (never pickle). The model is built abstractly
(`nnx.eval_shape`, no random init, no memory), then each tensor is read on its
own with `safe_open`, cast to the target dtype and placed, so peak extra memory
is one tensor in its file dtype: a 3.8B model in bf16 (7.6 GB) fits one 80 GB
GPU even from float32 shards.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os

import jax
import jax.numpy as jnp
from flax import nnx
from safetensors import safe_open
from tqdm.auto import tqdm

from hqf_jax.nn.hf_decoder import DecoderConfig, HFDecoderLM

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_IGNORED_KEYS = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """The checkpoint folder cannot be loaded; the message says what to do."""


def safetensors_files(folder: str) -> list[str]:
    """The folder's safetensors shards (sorted), or a CheckpointError naming the fix."""
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint folder {folder!r} does not exist; pass a folder holding config.json + *.safetensors")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise CheckpointError(f"{folder!r} has no config.json; save the model with transformers' save_pretrained")
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if files:
        return files
    pickles = [f for f in os.listdir(folder) if f.endswith(_PICKLE_SUFFIXES)]
    if pickles:
        raise CheckpointError(
            f"{folder!r} holds only pickle weights ({pickles[0]}); convert once with transformers: "
            "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)"
        )
    raise CheckpointError(f"{folder!r} has no *.safetensors weights; save the model with save_pretrained")


def checkpoint_sha256(folder: str) -> str:
    """sha256 over the folder's safetensors shards (sorted by name; name and bytes of each)."""
    h = hashlib.sha256()
    for path in safetensors_files(folder):
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def _path_key(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def load_hf_config(folder: str, dtype: str = "float32", param_dtype: str | None = None) -> DecoderConfig:
    safetensors_files(folder)
    with open(os.path.join(folder, "config.json")) as f:
        return DecoderConfig.from_hf(json.load(f), dtype=dtype, param_dtype=param_dtype)


def load_hf_decoder(
    folder: str,
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    sharding: jax.sharding.Sharding | None = None,
    progress: bool = True,
) -> HFDecoderLM:
    """Load config.json + every *.safetensors shard in `folder` into an HFDecoderLM.

    dtype: compute dtype; param_dtype: storage dtype of the weights (default = dtype), each tensor is cast to it as
    it is read. sharding: optional placement for every tensor (default: jax's default device).
    """
    files = safetensors_files(folder)
    cfg = load_hf_config(folder, dtype=dtype, param_dtype=param_dtype)
    abstract = nnx.eval_shape(lambda: HFDecoderLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    variables = {_path_key(p): v for p, v in nnx.to_flat_state(state)}
    target = cfg.weight_dtype
    loaded: set[str] = set()
    names = []
    for path in files:
        with safe_open(path, framework="flax") as fh:
            names.extend((path, k) for k in fh.keys())
    current, fh = None, None
    for path, key in tqdm(names, desc="load safetensors", disable=not progress, leave=False):
        if key.endswith(_IGNORED_KEYS) or (key == "lm_head.weight" and cfg.tie_word_embeddings):
            continue
        if key not in variables:
            raise CheckpointError(f"tensor {key!r} in {os.path.basename(path)} has no place in the {cfg.family} decoder")
        if path != current:
            fh = safe_open(path, framework="flax")
            current = path
        var = variables[key]
        want = var.get_value().shape
        x = fh.get_tensor(key)
        if tuple(x.shape) != tuple(want):
            raise CheckpointError(f"tensor {key!r} has shape {tuple(x.shape)}, config.json implies {tuple(want)}")
        x = x.astype(target)
        if sharding is not None:
            x = jax.device_put(x, sharding)
        var.set_value(x)
        loaded.add(key)
        del x
    missing = sorted(set(variables) - loaded)
    if missing:
        raise CheckpointError(f"{len(missing)} weights missing from {folder!r}, first: {missing[0]}")
    return nnx.merge(graphdef, state)


def abstract_decoder(cfg: DecoderConfig) -> HFDecoderLM:
    """The decoder with ShapeDtypeStruct leaves (no memory): for parameter counting and planning."""
    return nnx.eval_shape(lambda: HFDecoderLM(cfg, rngs=nnx.Rngs(0)))


def param_bytes(model: nnx.Module, wrt=nnx.Param) -> int:
    """Bytes of the model's variables selected by `wrt` (works on abstract models too)."""
    return sum(
        math.prod(v.get_value().shape) * jnp.dtype(v.get_value().dtype).itemsize
        for _, v in nnx.to_flat_state(nnx.state(model, wrt))
    )
