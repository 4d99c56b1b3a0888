"""Device mesh (data, fsdp, tensor) and the shardings of parameters and batches.

Parameters are sharded by logical-axis rules on their path: each rule maps a regex over the
parameter path to a PartitionSpec over mesh axes. A dimension is sharded only when the mesh
axis divides it; otherwise it stays replicated (so any mesh shape runs any model).
Batches are split over ("data", "fsdp") on their first axis.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hqf_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (path regex, spec for the parameter's dims). Linear kernels are (in, out).
# Column-parallel (out on tensor): q, k, v, g, gate, up; row-parallel (in on tensor): o, down.
DEFAULT_RULES: tuple[tuple[str, tuple], ...] = (
    (r"embed.*embedding", ("tensor", "fsdp")),
    (r"(q|k|v|g|gate|up|q_proj|k_proj|v_proj|qkv_proj|gate_proj|up_proj|gate_up_proj).*kernel", ("fsdp", "tensor")),
    (r"(o|down|o_proj|down_proj).*kernel", ("tensor", "fsdp")),
    (r"head.*kernel|lm_head.*kernel", ("fsdp", "tensor")),
    (r"lora_a", ("fsdp", None)),
    (r"lora_b", (None, "tensor")),
)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """Mesh of shape (data, fsdp, tensor); a -1 takes the devices the others leave."""
    devices = list(devices if devices is not None else jax.devices())
    shape = [int(mesh_cfg[a]) for a in MESH_AXES]
    if shape.count(-1) > 1:
        raise ConfigError(f"at most one mesh axis may be -1; got mesh {dict(zip(MESH_AXES, shape))}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ConfigError(f"{len(devices)} devices do not split into mesh {dict(zip(MESH_AXES, shape))}")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ConfigError(f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices but {len(devices)} are "
                          "present; set mesh.data=-1 to use all of them")
    return Mesh(np.array(devices).reshape(shape), MESH_AXES)


def path_str(path) -> str:
    """'a/b/0/kernel' for a jax key path (dict keys, sequence indices and attributes alike)."""
    return "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh, rules=DEFAULT_RULES) -> P:
    for pattern, spec in rules:
        if re.search(pattern, path) and len(spec) == len(shape):
            axes = tuple(a if a is not None and mesh.shape[a] > 1 and dim % mesh.shape[a] == 0 else None
                         for a, dim in zip(spec, shape))
            return P(*axes)
    return P()


def tree_shardings(tree, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for every array leaf of ``tree`` by the rules (scalars replicated)."""

    def one(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, spec_for(path_str(path), shape, mesh, rules) if shape else P())

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def local_rows(global_batch_size: int) -> slice:
    """Rows of the global batch that this process feeds (contiguous, by process index)."""
    n = jax.process_count()
    if global_batch_size % n:
        raise ConfigError(f"data.batch_size={global_batch_size} must be a multiple of the {n} processes")
    per = global_batch_size // n
    i = jax.process_index()
    return slice(i * per, (i + 1) * per)


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble a global batch from this process's rows (works single- and multi-process)."""
    sharding = batch_sharding(mesh)
    out = {}
    for k, v in batch.items():
        rows = v[local_rows(v.shape[0])]
        out[k] = jax.make_array_from_process_local_data(sharding, rows, v.shape)
    return out
