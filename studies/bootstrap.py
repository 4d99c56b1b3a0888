"""The experiment RetNPhi stands on (issue 3, point 5): does a pretrained token model make byte-level
learning faster than starting from scratch?

    python -m studies.bootstrap [--config configs/retnphi_tiny.py] [--out runs/bootstrap_study] [--steps N]
                                   [--token-config configs/token_lm_tiny.py] [key=value ...]

Runs, all on the same byte data, batch, seq_len, optimizer and learning-rate schedule, through the shared
loop (each run folder works with eval.bpb / eval.generate):

  scratch       the converted architecture (same config.json, same parameter count) on a *randomly
                initialised* base (Llama init, std initializer_range), every parameter trained, N steps
  lora          the converted pretrained token model, frozen base + LoRA / norms / byte tables, N steps
  full          the converted pretrained token model, every parameter trained, N steps
  scratch_eq    scratch trained for as many FLOPs as `full` *including* the token model's pretraining
                (N + pretraining FLOPs / scratch FLOPs per step), its own schedule: equal compute

The token model (model.checkpoint) is trained first with --token-config when its folder is missing. FLOPs
come from each task's analytic flops_per_step (hqf_jax.trainer.retnphi_task.flops_per_byte: a frozen base
costs no weight gradients) and the token run's training.json. Prints validation bpb side by side (step 0 =
the converted model before any byte training) and writes the curves (vs steps and vs cumulative FLOPs)
to <out>/bootstrap_study.png and the numbers to <out>/results.json.
"""

from __future__ import annotations

from hqf_jax.report import save_figure

import argparse
import json
import math
from pathlib import Path

from hqf_jax import cli
from hqf_jax.data.catalog import load_corpus
from hqf_jax.trainer import retnphi_task, token_task
from hqf_jax.trainer.bootstrap_runs import random_base, run_one

METHODS = ("scratch", "lora", "full", "scratch_eq")


def ensure_token_model(checkpoint: Path, token_config: str) -> dict:
    """The token run's training.json; trains the token model with `token_config` if its HF folder is missing."""
    if not (checkpoint / "config.json").exists():
        if checkpoint.name != "hf":
            raise cli.ConfigError(f"model.checkpoint {checkpoint} is missing; train it (python -m train.token_lm) "
                                  "or point model.checkpoint at an HF folder")
        print(f"[study] {checkpoint} is missing: training the token model with {token_config}")
        cfg = cli.load_config(token_config)
        final, out = token_task.train_and_export(cfg, checkpoint.parent, cli.config_to_json(cfg))
        if out is None:
            raise cli.ConfigError(f"the token model's training stopped at step {final['step']} before its HF folder "
                                  f"was written; re-run to resume it")
    info = checkpoint / "training.json"
    return json.loads(info.read_text()) if info.exists() else {}


def run_config(base_cfg, method: str, steps: int, checkpoint: Path, lr: float | None):
    cfg = cli.config_from_json(cli.config_to_json(base_cfg))
    cfg.task = "retnphi"
    cfg.train.steps = int(steps)
    cfg.model.checkpoint = str(checkpoint)
    cfg.model.train_mode = "lora" if method == "lora" else "full"
    if method.startswith("scratch"):
        cfg.model.retnphi.byte_init = "random"  # nothing to take byte rows from: a random token table
    if lr is not None:
        cfg.train.lr = float(lr)
    return cfg


def plot(results: dict, pretrain_flops: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"scratch": "C0-", "scratch_eq": "C0--", "lora": "C1-", "full": "C2-"}
    for name, r in results.items():
        steps, bpb = zip(*r["curve"])
        offset = 0.0 if name.startswith("scratch") else pretrain_flops
        label = f"{name} ({r['trainable']:,} trained)"
        a.plot(steps, bpb, styles[name], marker="o", ms=3, label=label)
        b.plot([offset + s * r["flops_per_step"] for s in steps], bpb, styles[name], marker="o", ms=3, label=label)
    if pretrain_flops:
        b.axvline(pretrain_flops, color="gray", lw=0.8, ls=":", label="token-model pretraining")
    a.set(xlabel="byte-level training steps", ylabel="validation bits per byte", title="equal steps")
    b.set(xlabel="training FLOPs (bootstrapped: incl. token pretraining)", ylabel="validation bits per byte",
          title="equal compute")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/retnphi_tiny.py")
    p.add_argument("--token-config", default="configs/token_lm_tiny.py",
                   help="trains the token model when model.checkpoint is missing")
    p.add_argument("--out", default="runs/bootstrap_study")
    p.add_argument("--steps", type=int, default=None, help="byte-level steps of scratch/lora/full (default train.steps)")
    p.add_argument("--methods", default=",".join(METHODS))
    for m in ("scratch", "lora", "full"):
        p.add_argument(f"--lr-{m}", type=float, default=None, help=f"learning rate of {m} (default train.lr)")
    p.add_argument("--no-progress", action="store_true")
    cli.add_overrides(p, help="config overrides key.sub=value (all runs)")
    a = cli.parse(p, argv)
    base = cli.load_config(a.config, a.overrides)
    methods = [m for m in a.methods.split(",") if m]
    bad = set(methods) - set(METHODS)
    if bad:
        raise cli.ConfigError(f"unknown --methods {sorted(bad)}; valid: {', '.join(METHODS)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = a.steps or int(base.train.steps)
    base = cli.apply_overrides(base, [f"train.steps={steps}"])

    checkpoint = Path(base.model.checkpoint)
    info = ensure_token_model(checkpoint, a.token_config)
    pretrain_flops = float(info.get("train_flops", 0.0))
    rand = random_base(checkpoint, out, int(base.train.seed) + 1)
    corpus = load_corpus(base.data)
    lrs = {"scratch": a.lr_scratch, "scratch_eq": a.lr_scratch, "lora": a.lr_lora, "full": a.lr_full}

    results: dict[str, dict] = {}
    for name in methods:
        ckpt = rand if name.startswith("scratch") else checkpoint
        n = steps
        if name == "scratch_eq":  # the FLOPs of `full` (same per-step cost as scratch) plus the token pretraining
            per_step = retnphi_task.flops_per_byte(*retnphi_task.build_model(run_config(base, "scratch", 1, rand, None)),
                                                   base.data.seq_len) * base.data.seq_len * base.data.batch_size
            n = steps + math.ceil(pretrain_flops / per_step)
        cfg = run_config(base, name, n, ckpt, lrs[name])
        with cfg.unlocked():
            cfg.train.eval_every = max(1, n // 10)  # ~10 points per curve
            cfg.train.sample_every = max(n, 1)
        print(f"[study] {name}: {n} steps on {ckpt}")
        results[name] = run_one(cfg, out / name, corpus, progress=not a.no_progress)

    report = {"pretrain": info, "pretrain_flops": pretrain_flops, "checkpoint": str(checkpoint),
              "bytes_per_step": base.data.seq_len * base.data.batch_size, "steps": steps, "runs": results}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    plot(results, pretrain_flops, out / "bootstrap_study.png")
    print_table(report)
    print(f"[study] curves -> {out / 'bootstrap_study.png'}, numbers -> {out / 'results.json'}")
    return report


def print_table(report: dict) -> None:
    runs, pre = report["runs"], report["pretrain_flops"]
    info = report["pretrain"]
    if info:
        print(f"token model: {info.get('params', 0):,} params, {info.get('steps', 0)} steps, "
              f"{info.get('tokens', 0):,} tokens, {pre:.3g} FLOPs, its valid bpb {info.get('valid_bpb', float('nan')):.4f}")
    print(f"byte level: {report['steps']} steps x {report['bytes_per_step']} bytes")
    print(f"{'method':<11} {'steps':>6} {'trained':>10} {'lr':>8} {'bpb@0':>7} {'bpb@half':>8} {'bpb@end':>8} "
          f"{'run FLOPs':>10} {'+pretrain':>10}")
    for name, r in runs.items():
        curve = dict(r["curve"])
        half = min(curve, key=lambda s: abs(s - r["steps"] / 2))
        total = r["steps"] * r["flops_per_step"] + (0.0 if name.startswith("scratch") else pre)
        print(f"{name:<11} {r['steps']:>6} {r['trainable']:>10,} {r['lr']:>8.1e} {curve[0]:>7.3f} {curve[half]:>8.3f} "
              f"{r['valid_bpb']:>8.3f} {r['steps'] * r['flops_per_step']:>10.3g} {total:>10.3g}")


if __name__ == "__main__":
    cli.run_main(main)
