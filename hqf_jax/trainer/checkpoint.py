"""Orbax checkpoints of the train state, checked on the way in and out, with errors that name the
step and the file.

Layout of a run folder:
    <workdir>/config.json                   the full config of the run (eval rebuilds the model from it)
    <workdir>/checkpoints/<step>/           orbax checkpoints: the newest K and the best are kept
    <workdir>/checkpoints/<step>.sums.json  a checksum of every saved array, recorded at save
    <workdir>/best.json                     the best-validation step: {"step", "metric", "value", "mode"}
    <workdir>/corrupt/<step>/               steps found corrupt and moved aside by a fallback resume
    <workdir>/run.lock                      held by the one process training in the folder (runlock.py)
    <workdir>/metrics.jsonl, tb/            logs

Guarantees: a state with NaN/inf is never saved (NonFiniteError instead); a restored step matches the
checksums recorded when it was saved, array by array, or fails naming the array; a failed save (disk
full, write error) fails in one line, leaves no temporary folder behind and keeps every step saved
before it; rotation deletes a step only once a newer save has completed, and never the best step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

from hqf_jax.errors import CheckpointError, ConfigError, NonFiniteError
from hqf_jax.pytree import path_str

SUMS_SUFFIX = ".sums.json"
BEST_FILE = "best.json"
TMP_MARK = ".orbax-checkpoint-tmp"


class CorruptCheckpoint(CheckpointError):
    """A saved step that cannot be read back as it was written."""

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


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


def _short(e: BaseException) -> str:
    """An exception in a few words for a one-line message: no multi-line text, no reprs of C++ objects
    (orbax's read errors embed a pybind11 bound method), the underlying cause when it says more."""
    if isinstance(e, OSError) and e.strerror:
        text = f"[Errno {e.errno}] {e.strerror}" + (f": {e.filename}" if e.filename else "")
    else:
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        text = lines[0] if lines else ""
        text = re.split(r"\s*See full TensorStore details|<bound method|<\S+ object at 0x", text)[0].strip()
    cause = e.__cause__ or e.__context__
    if cause is not None and not isinstance(e, OSError):
        text = f"{text} ({_short(cause)})" if text else _short(cause)
    name, text = type(e).__name__, text[:300]
    if not text:
        return name
    return text if name == "Exception" else f"{name}: {text}"


# ----------------------------------------------------------------------------- checksums


def _leaf_sum(x):
    """Two 32-bit sums of an array's raw words, each word weighted by an odd number that depends on its
    position: any change to one element changes both (an odd weight times a nonzero difference is
    nonzero modulo 2^32); integer sums are exact in any reduction order, so sharding does not matter."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    word = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    w = jax.lax.bitcast_convert_type(x, word).reshape(-1).astype(jnp.uint32)
    i = jnp.arange(w.size, dtype=jnp.uint32)
    m1 = (i * jnp.uint32(0x9E3779B1) + jnp.uint32(0x7F4A7C15)) | jnp.uint32(1)
    m2 = ((i ^ jnp.uint32(0x5BD1E995)) * jnp.uint32(0x85EBCA6B)) | jnp.uint32(1)
    h1 = jnp.sum(w * m1, dtype=jnp.uint32)
    h2 = jnp.sum((w ^ (w >> 16)) * m2, dtype=jnp.uint32)
    return jnp.stack([h1, h2])


def _leaf_finite(x):
    return jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)


@jax.jit
def _sum_and_finite(x):
    return _leaf_sum(x), _leaf_finite(x)


def fingerprint(tree) -> tuple[dict[str, str], list[str]]:
    """({array path: checksum hex}, [paths of float arrays holding NaN/inf]) of a pytree of arrays.

    One small program per leaf, compiled once per shape, dtype and sharding and reused by every tree that has such
    a leaf (the parameters and both Adam moments share shapes; so do the runs of one process), where a jit of the
    whole tree compiled once per tree (tests/test_faults.py asserts the reuse)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    # each program finished before the next is dispatched (the train step that made the tree too): on CPUs, programs
    # of sharded leaves in flight together waited on each other's collectives and hung (8 virtual devices in one
    # process; two jax.distributed processes)
    jax.block_until_ready(tree)
    results = [jax.device_get(_sum_and_finite(x)) for _, x in flat]
    hexes = {path_str(k): "".join(f"{int(v):08x}" for v in np.asarray(s)) for (k, _), (s, _) in zip(flat, results)}
    bad = [path_str(k) for (k, _), (_, ok) in zip(flat, results) if not bool(ok)]
    return hexes, bad


def _write_json(path: Path, obj) -> None:
    """Atomically: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_best(workdir: str | Path) -> dict | None:
    path = Path(workdir) / BEST_FILE
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except ValueError:
        return None


class Checkpointer:
    """Saves (asynchronously) and restores the train state of one run folder.

    ``keep`` newest steps are kept, plus the step named in best.json. A step is deleted only after a
    newer save has completed. Only the training run passes ``trainer=True`` (it removes what a crashed
    save left behind); readers (eval) must not, or they would remove a running save's temporary folder."""

    def __init__(self, workdir: str | Path, keep: int = 3, async_save: bool = True, trainer: bool = False):
        if keep < 1:
            raise ConfigError(f"train.keep={keep}: keep at least 1 checkpoint (train.keep=3 is the default)")
        self.workdir = Path(workdir).absolute()
        self.dir = self.workdir / "checkpoints"
        self.keep = int(keep)
        self._writer = jax.process_index() == 0
        self._trainer = trainer
        best = read_best(self.workdir)
        self._best_step = best.get("step") if best else None  # every process decides rotation from this copy
        self._pending: tuple[int, dict | None] | None = None  # (step, best record) of the save in flight
        self._save_failed = False  # a save failed and was reported: later errors of its leftovers are not news
        options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=trainer)  # a crash's half-written step
        try:
            self.manager = ocp.CheckpointManager(self.dir, options=options, item_handlers=ocp.StandardCheckpointHandler())
        except Exception as e:  # unreadable folder, corrupt metadata
            raise CheckpointError(f"cannot open checkpoint folder {self.dir}: {_short(e)}") from None

    # ------------------------------------------------------------------ steps

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best(self) -> dict | None:
        """best.json when its step is still saved, else None."""
        best = read_best(self.workdir)
        return best if best is not None and best.get("step") in self.all_steps() else None

    def resolve(self, step: int | str | None) -> tuple[int, str]:
        """(step, how it was chosen) for a step given as an int, "latest"/None or "best" (the best-validation
        step, else the newest when the run recorded none)."""
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"{self.dir} holds no checkpoint; train first (python -m train.lm)")
        if step is None or step == "latest":
            return steps[-1], "latest"
        if step == "best":
            best = self.best()
            if best is None:
                return steps[-1], "latest; the run recorded no best step"
            return int(best["step"]), f"best {best['metric']}={best['value']:.4f}"
        try:
            step = int(step)
        except (TypeError, ValueError):
            raise CheckpointError(f"step {step!r} is not a number, 'latest' or 'best'") from None
        if step not in steps:
            raise CheckpointError(f"{self.dir} has no step {step}; saved steps: {steps} (or 'latest', 'best')")
        return step, "chosen"

    # ------------------------------------------------------------------ save

    def save(self, step: int, state, force: bool = True, best: dict | None = None) -> bool:
        """Save ``state`` at ``step`` (asynchronously; the next save or close() completes it). ``best`` (metric,
        value, mode) marks it as the new best-validation step once it is on disk."""
        self._complete()
        sums, bad = fingerprint(state)
        if bad:
            raise NonFiniteError(f"the state at step {step} holds NaN or inf (first: {bad[0]}); it was not saved and "
                                 f"the saved steps {self.all_steps()} are kept; lower train.lr (or check the data), "
                                 "then re-run the same command to resume")
        sums_path = self.dir / f"{step}{SUMS_SUFFIX}"
        try:
            if self._writer:
                self.dir.mkdir(parents=True, exist_ok=True)
                _write_json(sums_path, {"step": int(step), "sum": "hqf-u32x2-v1", "arrays": sums})
            saved = self.manager.save(step, args=ocp.args.StandardSave(state), force=force)
        except Exception as e:
            self._failed(step, e)
        self._pending = (step, best) if saved else None
        return saved

    def _complete(self) -> None:
        """Wait for the save in flight; then record it as best if it is, and rotate old steps out."""
        pending, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as e:
            if pending is None and self._save_failed:  # the aftermath of a failed save already reported (orbax's
                return  # threads may still trip over the temporary folder it removed): keep that one error
            self._failed(pending[0] if pending else None, e)
        if pending is None:
            return
        self._save_failed = False  # a save completed since: a later error is news again
        step, best = pending
        if best is not None:
            self._best_step = int(step)
            if self._writer:
                _write_json(self.workdir / BEST_FILE, {"step": int(step), **best})
        self.rotate()

    def _failed(self, step: int | None, e: BaseException):
        """A save that did not complete: remove what it left, keep every earlier step, fail in one line."""
        self._save_failed = True
        try:  # let orbax's background threads settle before removing what they wrote
            self.manager.wait_until_finished()
        except Exception:
            pass
        self._remove_temporary()
        if step is not None and self._writer:
            (self.dir / f"{step}{SUMS_SUFFIX}").unlink(missing_ok=True)
            if step not in self._committed():  # a half-written step folder would block the next resume
                shutil.rmtree(self.dir / str(step), ignore_errors=True)
        try:
            self.manager.reload()
        except Exception:
            pass
        kept = self._committed()
        last = f"the newest saved step {kept[-1]} is kept" if kept else "no earlier step was saved"
        raise CheckpointError(f"saving step {step} to {self.dir} failed ({_short(e)}); {last}; free disk space "
                              "(or fix the folder's permissions), then re-run the same command to resume") from None

    def _remove_temporary(self) -> None:
        if self._trainer:
            for p in self.dir.glob(f"*{TMP_MARK}*"):
                shutil.rmtree(p, ignore_errors=True)

    def _committed(self) -> list[int]:
        """Steps whose folders orbax finished writing (their commit marker is there)."""
        return sorted(int(p.name) for p in self.dir.glob("*")
                      if p.name.isdigit() and (p / "commit_success.txt").exists()) if self.dir.exists() else []

    def rotate(self) -> None:
        """Delete all but the newest ``keep`` steps and the best step; drop checksum files without a step."""
        steps = self.all_steps()
        keep = set(steps[-self.keep:]) | {self._best_step}
        for s in steps:
            if s not in keep:
                self.manager.delete(s)
                if self._writer:
                    (self.dir / f"{s}{SUMS_SUFFIX}").unlink(missing_ok=True)
        if self._writer:
            for p in self.dir.glob(f"*{SUMS_SUFFIX}"):
                if not (self.dir / p.name[:-len(SUMS_SUFFIX)]).is_dir():
                    p.unlink(missing_ok=True)

    def wait(self) -> None:
        self._complete()

    # ------------------------------------------------------------------ restore

    def restore(self, step: int, abstract_state, verify: bool = True):
        """Restore ``step`` into the structure/shardings of ``abstract_state`` (ShapeDtypeStructs) and check
        it against the checksums recorded at save (CorruptCheckpoint naming the array when one differs).

        The saving mesh does not matter: each array is read into the sharding asked for (leaves
        without one, e.g. from jax.eval_shape, are replicated like the others or put on device 0)."""
        step_dir = self.dir / str(step)
        abstract_state = _fill_shardings(abstract_state)
        try:
            meta = self.manager.item_metadata(step)
        except Exception as e:
            raise CorruptCheckpoint(step, f"checkpoint step {step} at {step_dir} is unreadable ({_short(e)})") from None
        if meta is not None:
            mismatch = _describe_mismatch(abstract_state, meta)
            if mismatch:
                raise CheckpointError(f"checkpoint step {step} at {step_dir} is from another model shape: {mismatch}; "
                                      "use a new --workdir or the config that wrote it")
        try:
            state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:
            files = sorted(str(p.relative_to(self.dir)) for p in step_dir.rglob("*") if p.is_file())[:3]
            raise CorruptCheckpoint(step, f"checkpoint step {step} at {step_dir} is corrupt ({_short(e)}); "
                                          f"files there include {files}") from None
        if verify:
            self._verify(step, state)
        return state

    def _verify(self, step: int, state) -> None:
        path = self.dir / f"{step}{SUMS_SUFFIX}"
        if not path.exists():  # written before checksums existed: nothing to compare with
            return
        try:
            recorded = json.loads(path.read_text())["arrays"]
        except (ValueError, KeyError) as e:
            raise CorruptCheckpoint(step, f"checksum file {path} is unreadable ({_short(e)})") from None
        sums, _ = fingerprint(state)
        for key, value in sums.items():
            if recorded.get(key) != value:
                raise CorruptCheckpoint(step, f"checkpoint step {step} at {self.dir / str(step)} is corrupt: array "
                                              f"{key} differs from the checksum recorded at save ({path.name})")

    def newest_intact(self, abstract_state, below: int):
        """(step, state) of the newest step older than ``below`` that restores and verifies, or (None, None)."""
        for s in reversed([s for s in self.all_steps() if s < below]):
            try:
                return s, self.restore(s, abstract_state)
            except CorruptCheckpoint:
                continue
        return None, None

    def restore_newest(self, abstract_state, fallback: bool = False, flag: str = "train.resume_fallback=true"):
        """(state, step) of the newest saved step. When it is corrupt: with ``fallback`` the newest intact
        step is used and the corrupt ones are moved to <workdir>/corrupt/; without, a one-line error
        names the corrupt step and offers the intact one (``flag`` says how to take it)."""
        steps = self.all_steps()
        try:
            return self.restore(steps[-1], abstract_state), steps[-1]
        except CorruptCheckpoint as e:
            intact, state = self.newest_intact(abstract_state, below=e.step)
            if intact is None:
                raise CheckpointError(f"{e}; no earlier intact step: start a new --workdir") from None
            if not fallback:
                raise CheckpointError(f"{e}; the newest intact step is {intact}: re-run with {flag} to resume from it "
                                      f"(the newer steps are moved to {self.workdir / 'corrupt'})") from None
            self.manager.wait_until_finished()
            moved = [s for s in steps if s > intact]
            if self._best_step in moved:
                self._best_step = None
            if self._writer:
                for s in moved:
                    dest = self.workdir / "corrupt" / str(s)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.rmtree(dest, ignore_errors=True)
                    shutil.move(str(self.dir / str(s)), dest)
                    sums = self.dir / f"{s}{SUMS_SUFFIX}"
                    if sums.exists():
                        shutil.move(str(sums), dest.parent / f"{s}{SUMS_SUFFIX}")
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("hqf: corrupt steps moved aside")
            self.manager.reload()
            if self._writer:
                print(f"[train] {e}; resuming from step {intact}, the newest intact step; moved steps {moved} to "
                      f"{self.workdir / 'corrupt'}", flush=True)
            return state, intact

    def close(self) -> None:
        try:
            self._complete()
        finally:
            try:
                self.manager.close()
            except Exception:
                if not self._save_failed:  # after a failed save already reported, orbax's closing re-raise is not news
                    raise
            finally:
                self._remove_temporary()  # nothing is in flight any more: a temporary folder now is debris


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
