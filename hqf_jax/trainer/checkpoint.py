"""Orbax checkpoints of the train state, with errors that name the step and the file.

Layout of a run folder:
    <workdir>/config.json          the full config of the run (eval rebuilds the model from it)
    <workdir>/checkpoints/<step>/  orbax checkpoints, the newest K kept
    <workdir>/metrics.jsonl, tb/   logs
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

from hqf_jax.errors import CheckpointError
from hqf_jax.pytree import path_str


def _describe_mismatch(abstract, saved_meta) -> str | None:
    """First leaf whose saved shape differs from the model's, as 'path: saved (..) vs model (..)'."""
    try:
        flat_a = {path_str(k): v for k, v in jax.tree_util.tree_flatten_with_path(abstract)[0]}
        flat_s = {path_str(k): v for k, v in jax.tree_util.tree_flatten_with_path(saved_meta)[0]}
    except Exception:  # metadata trees that cannot be flattened the same way
        return None
    for key, a in flat_a.items():
        s = flat_s.get(key)
        if s is None:
            return f"{key} is missing from the checkpoint"
        if hasattr(s, "shape") and tuple(s.shape) != tuple(a.shape):
            return f"{key}: saved shape {tuple(s.shape)} vs model shape {tuple(a.shape)}"
    extra = sorted(set(flat_s) - set(flat_a))
    if extra:
        return f"the checkpoint has parameters the model lacks, e.g. {extra[0]}"
    return None


_OBJECT_REPR = re.compile(r"\s*(See full [^:]*:\s*)?<(bound method|built-in method|function|[\w.]+ object)\b.*$")


def _reason(e: BaseException) -> str:
    """One clean line for a restore failure: the innermost exception of the chain (tensorstore's own
    message names the array and the byte range), first line only, object reprs (pybind11 bound methods,
    '<... object at 0x..>') cut off."""
    root, seen = e, 0
    while (root.__cause__ or root.__context__) is not None and seen < 20:
        root, seen = root.__cause__ or root.__context__, seen + 1
    lines = str(root).strip().splitlines()
    text = _OBJECT_REPR.sub("", lines[0] if lines else "").strip()
    return f"{type(root).__name__}: {text[:300] or 'no message'}"


class Checkpointer:
    def __init__(self, workdir: str | Path, keep: int = 3, async_save: bool = True):
        self.dir = Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        try:
            self.manager = ocp.CheckpointManager(self.dir, options=options, item_handlers=ocp.StandardCheckpointHandler())
        except Exception as e:  # unreadable folder, corrupt metadata
            raise CheckpointError(f"cannot open checkpoint folder {self.dir}: {e}") from None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, force: bool = False) -> bool:
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state):
        """Restore ``step`` into the structure/shardings of ``abstract_state`` (ShapeDtypeStructs).

        The saving mesh does not matter: each array is read into the sharding asked for (leaves
        without one, e.g. from jax.eval_shape, are replicated like the others or put on device 0)."""
        step_dir = self.dir / str(step)
        abstract_state = _fill_shardings(abstract_state)
        try:
            meta = self.manager.item_metadata(step)
        except Exception as e:
            raise CheckpointError(f"checkpoint step {step} at {step_dir} is unreadable ({_reason(e)}); "
                                  f"move that folder aside to resume from an earlier step") from None
        if meta is not None:
            mismatch = _describe_mismatch(abstract_state, meta)
            if mismatch:
                raise CheckpointError(f"checkpoint step {step} at {step_dir} is from another model shape: {mismatch}; "
                                      "use a new --workdir or the config that wrote it")
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:
            files = sorted(str(p.relative_to(self.dir)) for p in step_dir.rglob("*") if p.is_file())[:3]
            raise CheckpointError(f"checkpoint step {step} at {step_dir} is corrupt ({_reason(e)}); "
                                  f"files there include {files}; "
                                  "move that folder aside to resume from an earlier step") from None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _fill_shardings(abstract):
    """Give sharding-less ShapeDtypeStructs a sharding: replicated on the mesh the others use, else
    device 0 (orbax would otherwise reuse the saving topology and fail on another one)."""
    leaves = jax.tree.leaves(abstract)
    named = next((x.sharding for x in leaves if isinstance(getattr(x, "sharding", None), NamedSharding)), None)
    default = NamedSharding(named.mesh, P()) if named is not None else SingleDeviceSharding(jax.devices()[0])

    def fill(x):
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=default)
        return x

    return jax.tree.map(fill, abstract)


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) of a pytree of arrays."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
