"""Save and restore a holographic memory with orbax (arrays) plus its config as JSON."""

from __future__ import annotations

import json
import os

import orbax.checkpoint as ocp

from hqf_jax.errors import CheckpointError
from hqf_jax.holo import episodic
from hqf_jax.holo.memory import HoloConfig, HoloState, abstract_state

CONFIG_FILE = "holo_config.json"
STATE_DIR = "state"


class HoloCheckpointError(CheckpointError, FileNotFoundError):
    """A memory checkpoint is missing or incomplete; the message names the path."""


def _to_tree(state: HoloState) -> dict:
    d = state._asdict()
    d["cache"] = d["cache"]._asdict()
    return d


def _from_tree(tree: dict) -> HoloState:
    tree = dict(tree)
    tree["cache"] = episodic.EpisodicCache(**tree["cache"])
    return HoloState(**tree)


def save_memory(path: str, state: HoloState, config: HoloConfig, extra: dict | None = None) -> str:
    """Write ``path/state`` (orbax) and ``path/holo_config.json``; ``path`` must not hold a state yet."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    if os.path.exists(os.path.join(path, STATE_DIR)):
        raise FileExistsError(f"{path}/{STATE_DIR} already exists; choose a new directory or delete it first")
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.join(path, STATE_DIR), _to_tree(state))
    ckpt.wait_until_finished()
    meta = {"config": config.to_dict(), "extra": extra or {}}
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    return path


def load_config(path: str) -> tuple[HoloConfig, dict]:
    cfg_path = os.path.join(os.path.abspath(path), CONFIG_FILE)
    if not os.path.exists(cfg_path):
        raise HoloCheckpointError(f"no memory config at {cfg_path}; train one with `python -m train.holo --config configs/holo.py`")
    with open(cfg_path) as f:
        meta = json.load(f)
    return HoloConfig.from_dict(meta["config"]), meta.get("extra", {})


def restore_memory(path: str) -> tuple[HoloState, HoloConfig, dict]:
    """Inverse of ``save_memory``: (state, config, extra)."""
    path = os.path.abspath(path)
    config, extra = load_config(path)
    state_dir = os.path.join(path, STATE_DIR)
    if not os.path.isdir(state_dir):
        raise HoloCheckpointError(f"memory arrays missing at {state_dir} (config present): the save was interrupted; retrain")
    abstract = _to_tree(abstract_state(config))
    try:
        tree = ocp.StandardCheckpointer().restore(state_dir, abstract)
    except Exception as e:  # orbax raises many types; name the file and the fix
        raise HoloCheckpointError(f"could not restore the memory at {state_dir}: {type(e).__name__}: {str(e)[:200]}") from None
    return _from_tree(tree), config, extra

