"""Device mesh (data, fsdp, tensor) and the shardings of parameters, optimizer state and batches.

Two tables decide where a parameter lives, as in MaxText:

1. ``PARAM_RULES`` (regex on the parameter's path -> one *logical* axis name per dimension), e.g.
   ``blocks/0/ffn/up/kernel`` -> ("embed", "mlp").
2. ``LOGICAL_AXIS_RULES`` (logical name -> mesh axis): embed -> fsdp, heads/mlp/vocab -> tensor,
   embedding-table rows -> fsdp, everything else replicated.

A dimension is sharded only when the mesh axis divides it; otherwise that dimension stays
replicated (so any mesh shape runs any model, e.g. the 259-row byte vocabulary never splits).
Optimizer state (Adam's mu/nu) has the parameter's path as its suffix and gets the same sharding.
Batches are split over ("fsdp", "data") on their first axis (see BATCH_AXES for why this order);
each process feeds only the rows its own devices hold (``put_batch``), so the same code runs
single- and multi-process.

Path conventions the rules cover (checked by tests/test_sharding.py on every model):
  nnx.Linear / nnx.Embed (byte LM, hqf_jax.nn.retnet):  <name>/kernel (in, out), embed/embedding (V, D)
  HF-layout Linear (hqf_jax.nn.hf_decoder, RetNPhi):   <name>/weight (out, in), bias (out,)
  LoRA / DoRA (hqf_jax.nn.lora):                        <name>/lora_A (r, in), lora_B (out, r), magnitude (out,)
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hqf_jax.errors import ConfigError
from hqf_jax.mesh_axes import BATCH_AXES, MESH_AXES  # noqa: F401 (re-exported; defined there for the models too)
from hqf_jax.pytree import path_str

# BATCH_AXES: the batch is split over fsdp x data, fsdp-major. Which rows land on which device is immaterial to
# the maths, but the order matters to XLA: with ("data", "fsdp") XLA's SPMD partitioner (jax 0.10.2,
# Shardy and GSPMD alike) miscompiles an embedding gather feeding a residual around a layer whose
# kernel is split over fsdp and tensor when fsdp == tensor > 1 and data > 1 (e.g. mesh (2,2,2)):
# forward and gradients come out wrong. ("fsdp", "data") gives the 1-device answer on every mesh
# tested (docs/scale.md has the 10-line reproduction; tests/test_sharding.py guards it).

# logical axis -> mesh axis (None: replicated; a tuple of mesh axes splits over their product, or
# over the longest prefix that divides the dimension). "embed" is the model width: sharding it over
# fsdp is ZeRO-3 (each device keeps 1/fsdp of every matrix and XLA all-gathers it for the matmul);
# heads / mlp / vocab over tensor is Megatron's column/row split.
LOGICAL_AXIS_RULES: dict[str, str | tuple[str, ...] | None] = {
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    # embedding tables split their rows: a lookup from a row-split table is a local gather plus a
    # sum, and its gradient stays local; splitting the width instead makes XLA replicate the
    # activations' gradient on a (data x fsdp) mesh. The byte tables (259 rows) stay replicated.
    "table_vocab": "fsdp",
    "table_embed": "tensor",
    "rank": None,  # LoRA rank: tiny
    "norm": None,  # 1-D scales, biases, DoRA magnitudes, decay constants: replicated
}

# projection name -> (logical axis of its input, of its output)
LINEARS: dict[str, tuple[str, str]] = {
    # byte LM (hqf_jax.nn.retnet): retention q k v, swish gate g, output o; SwiGLU gate up down; head
    "q": ("embed", "heads"), "k": ("embed", "heads"), "v": ("embed", "heads"), "g": ("embed", "heads"),
    "o": ("heads", "embed"),
    "gate": ("embed", "mlp"), "up": ("embed", "mlp"), "down": ("mlp", "embed"),
    "head": ("embed", "vocab"),
    # HF decoder (Phi-3 fused, Llama / Qwen2 / Mistral split) and RetNPhi's extra gate and byte head
    "q_proj": ("embed", "heads"), "k_proj": ("embed", "heads"), "v_proj": ("embed", "heads"),
    "qkv_proj": ("embed", "heads"), "ret_gate": ("embed", "heads"),
    "o_proj": ("heads", "embed"),
    "gate_proj": ("embed", "mlp"), "up_proj": ("embed", "mlp"), "gate_up_proj": ("embed", "mlp"),
    "down_proj": ("mlp", "embed"),
    "lm_head": ("embed", "vocab"), "byte_head": ("embed", "vocab"),
}
EMBEDDINGS = ("embed", "embed_tokens", "byte_embed")

_SEG = r"(?:^|/)"


def _build_rules() -> tuple[tuple[str, tuple], ...]:
    rules = []
    for name, (i, o) in LINEARS.items():
        rules += [
            (rf"{_SEG}{name}/kernel$", (i, o)),  # flax layout (in, out)
            (rf"{_SEG}{name}/weight$", (o, i)),  # PyTorch / HF layout (out, in)
            (rf"{_SEG}{name}/lora_A$", ("rank", i)),
            (rf"{_SEG}{name}/lora_B$", (o, "rank")),
        ]
    emb = "|".join(EMBEDDINGS)
    rules += [
        (rf"{_SEG}embed/embedding$", ("table_vocab", "table_embed")),  # nnx.Embed
        (rf"{_SEG}(?:{emb})/weight$", ("table_vocab", "table_embed")),  # hf_decoder.Embedding
        # vectors: norm scales (RMSNorm scale/weight, GroupNorm, HeadNorm), biases, DoRA magnitudes,
        # retention decays and RoPE frequencies (non-trained Variables in the rest of the state)
        (rf"{_SEG}(?:scale|bias|magnitude|gammas|inv_freq)$", ("norm",)),
        (rf"norm[^/]*/weight$", ("norm",)),
    ]
    return tuple(rules)


PARAM_RULES: tuple[tuple[str, tuple], ...] = _build_rules()


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """Mesh of shape (data, fsdp, tensor); a -1 takes the devices the others leave.

    Devices are ordered by (process, id), so each process's devices are a contiguous block of
    the mesh: an axis that spans hosts (put it first: data) crosses the slow network only there.
    """
    devices = sorted(devices if devices is not None else jax.devices(), key=lambda d: (d.process_index, d.id))
    try:
        shape = [int(mesh_cfg[a]) for a in MESH_AXES]
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"mesh needs integer keys {MESH_AXES} (e.g. mesh.data=-1 mesh.fsdp=1 mesh.tensor=1); "
                          f"got {mesh_cfg}") from None
    if shape.count(-1) > 1:
        raise ConfigError(f"at most one mesh axis may be -1; got mesh {dict(zip(MESH_AXES, shape))}")
    if any(s == 0 or s < -1 for s in shape):
        raise ConfigError(f"mesh axes must be positive or -1; got mesh {dict(zip(MESH_AXES, shape))}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ConfigError(f"{len(devices)} devices do not split into mesh {dict(zip(MESH_AXES, shape))}")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ConfigError(f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices but {len(devices)} are "
                          "present; set mesh.data=-1 to use all of them")
    return Mesh(np.array(devices, dtype=object).reshape(shape), MESH_AXES)


def _param_path(path: str) -> str:
    """Drop nnx's trailing '/value' (a Variable's payload) so rules see '.../kernel'."""
    return path[: -len("/value")] if path.endswith("/value") else path


def logical_axes(path: str, ndim: int, rules=None) -> tuple | None:
    """Logical axis names of the parameter at ``path`` (None: no rule has that path and rank)."""
    path = _param_path(path)
    for pattern, axes in PARAM_RULES if rules is None else rules:
        if len(axes) == ndim and re.search(pattern, path):
            return axes
    return None


def spec_for(path: str, shape: tuple[int, ...], mesh, rules=None, logical=None) -> P:
    """PartitionSpec of one parameter; ``mesh`` may be a Mesh or an AbstractMesh."""
    if not shape:
        return P()
    axes = logical_axes(path, len(shape), rules)
    if axes is None:
        return P()
    logical = LOGICAL_AXIS_RULES if logical is None else logical
    out, used = [], set()
    for name, dim in zip(axes, shape):
        target = logical.get(name)
        cand = [a for a in ((target,) if isinstance(target, str) else tuple(target or ()))
                if a not in used and mesh.shape[a] > 1]
        while cand and dim % math.prod(mesh.shape[a] for a in cand):  # the longest prefix that divides
            cand.pop()
        used.update(cand)
        out.append(None if not cand else cand[0] if len(cand) == 1 else tuple(cand))
    return P(*out)


def unmatched_paths(tree, rules=None) -> list[str]:
    """Paths of array leaves with at least one dimension that no rule covers (should be empty)."""
    missing = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = tuple(getattr(leaf, "shape", ()))
        if shape and logical_axes(path_str(path), len(shape), rules) is None:
            missing.append(path_str(path))
    return missing


def tree_shardings(tree, mesh: Mesh, rules=None, logical=None):
    """NamedShardings for every array leaf of ``tree`` by the rules (scalars replicated)."""

    def one(path, leaf):
        return NamedSharding(mesh, spec_for(path_str(path), tuple(getattr(leaf, "shape", ())), mesh, rules, logical))

    return jax.tree_util.tree_map_with_path(one, tree)


def describe(tree) -> dict[str, float]:
    """Bytes of ``tree`` in all and per device (max over devices), and the fraction of leaves sharded."""
    leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "sharding")]
    total = sum(x.size * x.dtype.itemsize for x in leaves)
    # from the shardings' shard shapes (the largest shard of each leaf), not the buffers: with one device per
    # process, jax 0.10 refused addressable_shards on arrays spread over several processes
    per_device = sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in leaves)
    sharded = sum(not x.sharding.is_fully_replicated for x in leaves)
    return {"bytes": float(total), "bytes_per_device": float(per_device),
            "sharded_leaves": float(sharded), "leaves": float(len(leaves))}


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def local_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> np.ndarray:
    """Indices of the global batch rows that this process's devices hold under ``sharding``, in the
    order jax.make_array_from_process_local_data expects (ascending blocks, concatenated)."""
    index = sharding.addressable_devices_indices_map(tuple(global_shape))
    n = global_shape[0]
    spans = sorted({(s[0].start or 0, n if s[0].stop is None else s[0].stop) for s in index.values()})
    return np.concatenate([np.arange(a, b) for a, b in spans])


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays from a batch dict: each process contributes only the rows its devices hold.

    ``batch`` holds the global batch (the data pipeline is a pure function of the step, so every
    process can compute it); only those rows are transferred to this process's devices.
    """
    sharding = batch_sharding(mesh)
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.shape[0] % n:
            raise ConfigError(f"batch size {v.shape[0]} of '{k}' must be a multiple of mesh data*fsdp = {n}")
        rows = local_rows(sharding, v.shape)
        out[k] = jax.make_array_from_process_local_data(sharding, v[rows], v.shape)
    return out
