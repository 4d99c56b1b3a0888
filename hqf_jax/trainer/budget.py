"""Time-budgeted pretraining inside one GPU study process (issue 18): a phase's steps are planned from its task's
analytic FLOPs per step at an assumed throughput, so its learning-rate schedule runs to the end, and
train.max_seconds caps its wall time (compiles included) when the device is slower than assumed.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from hqf_jax import cli
from hqf_jax.data.corpus import ByteCorpus
from hqf_jax.nn.retnet import count_params
from hqf_jax.trainer import lm_task, token_task
from hqf_jax.trainer.loop import train
from hqf_jax.trainer.metrics import read_metrics


def budget_steps(seconds: float, flops_per_step: float, tflops: float, min_steps: int = 2) -> int:
    """Steps that fit in `seconds` at an assumed `tflops` (the planned length; train.max_seconds caps the wall)."""
    return max(min_steps, int(seconds * tflops * 1e12 // max(flops_per_step, 1.0)))


def steps_for_flops(flops: float, flops_per_step: float, min_steps: int = 2) -> int:
    """The fewest whole steps whose FLOPs reach `flops`."""
    return max(min_steps, math.ceil(flops / max(flops_per_step, 1.0)))


def measured_tflops(workdir: Path) -> float:
    """Median TFLOP/s of a run's logged windows after the first (which holds the compile); 0 when none."""
    vals = [float(m["tflops"]) for m in read_metrics(workdir) if "tflops" in m]
    vals = vals[1:] or vals
    return float(sorted(vals)[len(vals) // 2]) if vals else 0.0


def pretrain_token_model(tcfg, corpus, folder: Path, *, pretrain_mb: float, valid_mb: float, seconds: float,
                         tflops: float, steps: int = 0, compile_allowance: float = 45.0) -> tuple[Path, dict]:
    """A byte-level BPE + the token decoder of `tcfg` on a sample of `pretrain_mb` MB of the corpus's training
    files (held-out: `valid_mb` MB of its validation files), `steps` or a `seconds` budget; exported as an HF
    folder. Returns (the folder, training info: params, steps, tokens, train_flops, valid bpb, corpus bytes,
    bytes seen, wall seconds, whether the time cap cut it)."""
    sub = ByteCorpus(token_task.sample_docs(corpus.train, int(pretrain_mb * 2**20)),
                     token_task.sample_docs(corpus.valid, int(valid_mb * 2**20)), "pretraining sample")
    with tcfg.unlocked():
        tcfg.train.max_seconds = seconds * 1.25 + compile_allowance

    def steps_for(task):
        task.sample_fn, task.best_metric = None, None  # no samples (decode compile), no best-step saves
        n = steps or budget_steps(seconds, task.flops_per_step, tflops)
        tcfg.train.eval_every = max(1, n // 4)
        return n

    t = time.perf_counter()
    final, hf = token_task.train_and_export(tcfg, folder, cli.config_to_json(tcfg), corpus=sub, steps_for=steps_for)
    if hf is None:
        raise cli.ConfigError(f"the token model's training stopped at step {final['step']} (signal) before export")
    info = json.loads((hf / "training.json").read_text())
    info.update(corpus_bytes=sum(len(d) for _, d in sub.train), planned_steps=int(tcfg.train.steps),
                capped=bool(final.get("max_seconds")), seconds=time.perf_counter() - t,
                tflops=measured_tflops(folder), bytes_seen=info["tokens"] * info.get("valid_bytes_per_token", 0.0))
    return hf, info


def pretrain_byte_lm(cfg, corpus, workdir: Path, *, seconds: float, tflops: float, steps: int = 0,
                     compile_allowance: float = 45.0, progress: bool = False):
    """The byte LM of `cfg` (configs/lm*.py) for `steps` or a `seconds` budget. Returns (task with the trained
    model, info: params, steps, bytes, train_flops, valid_bpb, wall seconds, capped)."""
    task, _ = lm_task.build_task(cfg, corpus)
    task.sample_fn, task.best_metric = None, None  # no samples (decode compile), no best-step saves
    with cfg.unlocked():
        cfg.train.steps = steps or budget_steps(seconds, task.flops_per_step, tflops)
        cfg.train.max_seconds = seconds * 1.25 + compile_allowance
        cfg.train.eval_every = max(1, cfg.train.steps // 4)
        cfg.train.sample_every = cfg.train.ckpt_every = cfg.train.steps
    t = time.perf_counter()
    final = train(task, cfg.train, cfg.mesh, workdir, cli.config_to_json(cfg), progress=progress)
    info = {"params": count_params(task.model), "steps": int(final["step"]), "planned_steps": int(cfg.train.steps),
            "bytes": int(final["step"]) * task.units_per_step, "train_flops": float(final["step"]) * task.flops_per_step,
            "valid_bpb": float(final.get("valid_bpb", float("nan"))), "seconds": time.perf_counter() - t,
            "capped": bool(final.get("max_seconds")), "tflops": measured_tflops(workdir)}
    return task, info
