"""The checkpoint to score for early stopping: the saved step with the lowest logged validation metric."""

from __future__ import annotations

from pathlib import Path

from hqf_jax.errors import CheckpointError
from hqf_jax.trainer.checkpoint import Checkpointer
from hqf_jax.trainer.metrics import read_metrics


def best_step(workdir: str | Path, metric: str = "valid_bpb") -> int:
    """The step with the lowest logged ``metric`` that still has a checkpoint (early stopping)."""
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        saved = set(ckpt.all_steps())
    finally:
        ckpt.close()
    rows = [(r[metric], r["step"]) for r in read_metrics(workdir) if metric in r and r["step"] in saved]
    if not rows:
        raise CheckpointError(f"{workdir} has no checkpoint at a step with a logged {metric}; "
                              "set train.ckpt_every = train.eval_every and a large train.keep when training")
    return min(rows)[1]
