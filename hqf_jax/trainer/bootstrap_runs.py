"""Pieces of the bootstrap studies (studies/bootstrap.py, studies/gpu_bootstrap.py): a random base of a token
model's shape, one RetNPhi run on the shared loop with its validation curve and compute, and step budgets.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from hqf_jax import cli
from hqf_jax.trainer import retnphi_task, token_task
from hqf_jax.trainer.budget import measured_tflops
from hqf_jax.trainer.loop import train
from hqf_jax.trainer.metrics import read_metrics


def random_base(checkpoint: Path, out: Path, seed: int) -> Path:
    """An HF folder with the token model's config.json and tokenizer but freshly initialised weights."""
    folder = Path(out) / "random_base"
    if not (folder / "model.safetensors").exists():
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(str(checkpoint))
        tokenizer = token_task.load_tokenizer(checkpoint)
        token_task.save_hf(token_task.build_decoder(hf_config, seed), hf_config, tokenizer, folder)
    return folder


def run_one(cfg, workdir: Path, corpus, progress: bool, steps_for=None, budgeted: bool = False) -> dict:
    """Train one RetNPhi run (resuming if its folder has checkpoints); returns its curve and compute.
    ``steps_for(task)`` (optional) sets train.steps once the task (and its FLOPs per step) is built;
    ``budgeted``: a time-budgeted run, which pays neither the text samples' decode compile nor a checkpoint at
    every improving eval (only the last step is saved)."""
    sha = retnphi_task.base_sha256(cfg)
    retnphi_task.check_same_base(workdir, sha)
    task, _ = retnphi_task.build_task(cfg, corpus)
    if budgeted:
        task.sample_fn, task.best_metric = None, None
    cfg.base_sha256 = sha
    if steps_for is not None:
        with cfg.unlocked():
            cfg.train.steps = int(steps_for(task))
            cfg.train.eval_every = max(1, cfg.train.steps // 8)  # ~8 points per curve
            cfg.train.sample_every = cfg.train.steps
    step0 = workdir / "step0.json"
    if not step0.exists():  # the converted model before any byte training
        workdir.mkdir(parents=True, exist_ok=True)
        step0.write_text(json.dumps(task.eval_fn(task.model)))
    final = train(task, cfg.train, cfg.mesh, workdir, cli.config_to_json(cfg), progress=progress)
    curve = [(0, json.loads(step0.read_text())["valid_bpb"])]
    curve += [(int(m["step"]), float(m["valid_bpb"])) for m in read_metrics(workdir) if "valid_bpb" in m]
    curve = sorted(dict(curve).items())  # a resumed run may log a step twice: keep the last
    counts = retnphi_task.param_counts(task.model, task.trainable)
    return {"curve": curve, "valid_bpb": float(final.get("valid_bpb", curve[-1][1])), "steps": int(final["step"]),
            "planned_steps": int(cfg.train.steps), "capped": bool(final.get("max_seconds", False)),
            "tflops": measured_tflops(workdir),
            "flops_per_step": float(task.flops_per_step), "params": counts["params"], "trainable": counts["trainable"],
            "lr": float(cfg.train.lr), "bytes_per_step": int(task.units_per_step)}


def bpb_at_flops(curve: list, flops_per_step: float, flops: float, offset: float = 0.0) -> float:
    """valid bpb of a curve [(step, bpb)] at `flops` (linear in log FLOPs between eval points; nan outside)."""
    pts = [(offset + s * flops_per_step, b) for s, b in curve]
    for (f0, b0), (f1, b1) in zip(pts, pts[1:]):
        if f0 <= flops <= f1:
            if f1 == f0 or f0 <= 0:
                return float(b1 if flops == f1 else b0)
            t = (math.log(flops) - math.log(f0)) / (math.log(f1) - math.log(f0))
            return float(b0 + t * (b1 - b0))
    return float("nan")
