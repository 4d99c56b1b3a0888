"""Adapter files: a safetensors delta of every trainable tensor plus a JSON manifest.

  <dir>/adapter.safetensors   dotted NNX path -> tensor (adapters, and the trained norms / byte embedding / head)
  <dir>/adapter.json          format, base checkpoint sha256, wrapped targets, LoRA config, extra config, sizes

`export_adapter` writes both and prints the size; `load_adapter` wraps the same projections of a fresh base model
(from the manifest's LoRA config) and writes the tensors into it bit-exactly; `lora.merge` then folds them in.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
from flax import nnx
from safetensors import safe_open
from safetensors.flax import save_file

from hqf_jax.nn.lora import LoRAConfig, TrainableFilter, apply_lora, lora_paths

FORMAT = "hqf-adapter-v1"
WEIGHTS, MANIFEST = "adapter.safetensors", "adapter.json"


class AdapterError(ValueError):
    """The adapter does not fit the model or its files are incomplete; the message names the fix."""


def _key(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def adapter_tensors(model: nnx.Module, trainable: TrainableFilter) -> dict[str, jnp.ndarray]:
    return {_key(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, trainable))}


def export_adapter(
    model: nnx.Module,
    out_dir: str,
    lora: LoRAConfig,
    *,
    trainable: TrainableFilter = TrainableFilter(),
    base_sha256: str | None = None,
    config: dict | None = None,
    dtype: str | None = None,
    verbose: bool = True,
) -> dict:
    """Write adapter.safetensors + adapter.json into out_dir; returns the manifest. dtype: optional cast on export."""
    tensors = adapter_tensors(model, trainable)
    if dtype is not None:
        tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    os.makedirs(out_dir, exist_ok=True)
    weights = os.path.join(out_dir, WEIGHTS)
    save_file(tensors, weights, metadata={"format": FORMAT})
    size = os.path.getsize(weights)
    manifest = {
        "format": FORMAT,
        "base_checkpoint_sha256": base_sha256,
        "targets": lora_paths(model),
        "lora": lora.to_dict(),
        "trainable_name_fragments": list(trainable.name_fragments),
        "config": config or {},
        "num_tensors": len(tensors),
        "num_params": int(sum(v.size for v in tensors.values())),
        "bytes": size,
    }
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    if verbose:
        print(f"adapter: {manifest['num_params']:,} params in {len(tensors)} tensors, {size / 2**20:.2f} MiB -> {weights}")
    return manifest


def read_manifest(adapter_dir: str) -> dict:
    path = os.path.join(adapter_dir, MANIFEST)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(adapter_dir, WEIGHTS)):
        raise AdapterError(f"{adapter_dir!r} lacks {MANIFEST} or {WEIGHTS}; write it with export_adapter")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise AdapterError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def load_adapter(
    model: nnx.Module, adapter_dir: str, *, rngs: nnx.Rngs | None = None, base_sha256: str | None = None
) -> dict:
    """Apply an exported adapter to `model` in place (wrapping its projections first if needed); returns manifest.

    base_sha256: when given, must equal the manifest's base checkpoint hash.
    """
    manifest = read_manifest(adapter_dir)
    want = manifest.get("base_checkpoint_sha256")
    if base_sha256 is not None and want is not None and base_sha256 != want:
        raise AdapterError(f"adapter was trained on base {want[:12]}..., this base is {base_sha256[:12]}...; load the matching base")
    lora = LoRAConfig.from_dict(manifest["lora"])
    if not lora_paths(model):
        apply_lora(model, lora, rngs or nnx.Rngs(0))
    if sorted(lora_paths(model)) != sorted(manifest["targets"]):
        raise AdapterError(f"adapter targets {len(manifest['targets'])} projections, the model wraps {len(lora_paths(model))}; use the same model config")
    trainable = TrainableFilter(tuple(manifest["trainable_name_fragments"]))
    variables = {_key(p): v for p, v in nnx.to_flat_state(nnx.state(model, trainable))}
    with safe_open(os.path.join(adapter_dir, WEIGHTS), framework="flax") as fh:
        keys = set(fh.keys())
        if keys != set(variables):
            extra, missing = sorted(keys - set(variables)), sorted(set(variables) - keys)
            raise AdapterError(f"adapter tensors do not fit the model (extra {extra[:2]}, missing {missing[:2]}); use the same model config")
        for k in keys:
            x = fh.get_tensor(k)
            var = variables[k]
            if x.shape != var.get_value().shape:
                raise AdapterError(f"adapter tensor {k} has shape {x.shape}, model has {var.get_value().shape}")
            var.set_value(x.astype(var.get_value().dtype))
    return manifest
