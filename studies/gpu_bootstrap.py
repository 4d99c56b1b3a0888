"""The bootstrap at GPU scale (issue 18, item 1), one process: pretrain a token model, convert it, train
the byte arms and a byte model from scratch at equal compute, score all on held-out files.

    HQF_DATA_STORE=/tmp/store python -m studies.gpu_bootstrap --out runs/gpu_bootstrap      # <= 9 min, one H200

Phases (each with a time budget: its steps are planned from the task's FLOPs per step at --tflops (the arms: at
the pretraining's measured TFLOP/s unless --arm-tflops), and
train.max_seconds caps its wall time, compiles included):
  token     a byte-level BPE trained with `tokenizers` on a sample of the training files, then a Llama-shape
            decoder (--token-config, 110M parameters on the GPU) pretrained on --pretrain-mb of training
            files, exported as an HF folder (config.json + model.safetensors + tokenizer)
  project   RetNPhi on it, the project's recipe (--config: LoRA on all projections, all norms, byte tables
            from token rows, decays 2^-5..2^-12)
  origin    RetNPhi on it, the origin code's recipe (--origin-config: DoRA r32 on o_proj, random byte tables,
            post-attention norms, decays 2^-5..2^-9, NF4-rounded frozen base)
  scratch_a the converted architecture on a random base, every weight trained, for the FLOPs of the larger
            bootstrap arm's byte training (equal compute, pretraining not counted)
  scratch_b the same for those FLOPs plus the token pretraining's (equal compute, pretraining counted; cut
            by --total-seconds when the GPU is slower than planned: its FLOPs reached are reported)
All byte runs score valid bpb on the same held-out files (the split by file name). Writes table.md,
results.json and bpb_vs_flops.png into --out (hqf_jax.report).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hqf_jax import cli
from hqf_jax.data.catalog import load_corpus
from hqf_jax.report import write_report, save_figure
from hqf_jax.trainer.bootstrap_runs import bpb_at_flops, random_base, run_one
from hqf_jax.trainer.budget import budget_steps, pretrain_token_model, steps_for_flops

ARMS = ("project", "origin", "scratch_a", "scratch_b")
DATA_KEYS = ("source", "paths", "valid_fraction", "max_files", "store_dir")


def arm_config(base, name: str, checkpoint: Path, seconds: float, a):
    cfg = cli.config_from_json(cli.config_to_json(base))
    with cfg.unlocked():
        cfg.model.checkpoint = str(checkpoint)
        if name.startswith("scratch"):
            cfg.model.train_mode = "full"
            cfg.model.retnphi.byte_init = "random"
            if "base_quant" in cfg.model:
                cfg.model.base_quant = ""
        cfg.train.max_seconds = seconds
    return cfg


def run_arms(a, base, origin, hf: Path, pre: dict, corpus, out: Path, t0: float) -> dict:
    arms = [x for x in a.arms.split(",") if x]
    runs: dict[str, dict] = {}
    arm_cap = a.arm_seconds * 1.25 + a.compile_allowance
    arm_tflops = a.arm_tflops or pre.get("tflops") or a.tflops
    for name in ("project", "origin"):
        if name in arms:
            cfg = arm_config(base if name == "project" else origin, name, hf, arm_cap, a)
            print(f"[gpu_bootstrap] {name}: {a.arm_seconds:.0f} s planned")
            runs[name] = run_one(cfg, out / name, corpus, not a.no_progress, lambda task: a.arm_steps or budget_steps(
                a.arm_seconds, task.flops_per_step, arm_tflops), budgeted=True)
    arm_flops = max([r["steps"] * r["flops_per_step"] for r in runs.values()] or [0.0])
    rand = random_base(hf, out, int(base.train.seed) + 1) if any(x.startswith("scratch") for x in arms) else None
    for name, target in (("scratch_a", arm_flops), ("scratch_b", arm_flops + pre["train_flops"])):
        if name not in arms:
            continue
        left = a.total_seconds - (time.perf_counter() - t0) - 20.0
        cap = max(10.0, left if name == "scratch_b" else min(left, arm_cap * 1.5))
        cfg = arm_config(base, name, rand, cap, a)
        print(f"[gpu_bootstrap] {name}: {target:.3g} FLOPs planned, capped at {cap:.0f} s")
        runs[name] = run_one(cfg, out / name, corpus, not a.no_progress,
                             lambda task, f=target: steps_for_flops(f, task.flops_per_step), budgeted=True)
        runs[name]["target_flops"] = target
    return runs


def table(report: dict) -> str:
    pre, runs = report["pretrain"], report["runs"]
    pf = pre["train_flops"]
    lines = [f"token model: {pre['params']:,} params (vocab {pre['vocab']}), {pre['steps']} steps "
             f"({'capped by time' if pre['capped'] else 'as planned'}), {pre['tokens']:,} tokens "
             f"(~{pre['bytes_seen'] / 2**20:.0f} MB of text seen, of a {pre['corpus_bytes'] / 2**20:.0f} MB corpus), "
             f"{pf:.3g} FLOPs in {pre['seconds']:.0f} s; its valid bpb {pre.get('valid_bpb', float('nan')):.4f}", "",
             "| arm | trainable / params | steps | bpb@0 | valid bpb | byte FLOPs | FLOPs incl. pretraining | scratch_b bpb at these byte FLOPs |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        boot = not name.startswith("scratch")
        flops = r["steps"] * r["flops_per_step"]
        eq = ""
        if boot and "scratch_b" in runs:  # scratch_b's curve read at this arm's byte FLOPs (mid-schedule)
            s = runs["scratch_b"]
            eq = f"{bpb_at_flops(s['curve'], s['flops_per_step'], flops):.4f}"
        cap = " (capped)" if r["capped"] else ""
        lines.append(f"| {name} | {r['trainable']:,} / {r['params']:,} | {r['steps']}{cap} | {r['curve'][0][1]:.3f} | "
                     f"{r['valid_bpb']:.4f} | {flops:.3g} | {flops + (pf if boot else 0.0):.3g} | {eq} |")
    lines += ["", "scratch_a: equal compute, pretraining not counted; scratch_b: equal compute, pretraining counted "
              "(the right column reads scratch_b mid-schedule, at a bootstrap arm's byte FLOPs)."]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pf = report["pretrain"]["train_flops"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"project": "C1-", "origin": "C3-", "scratch_a": "C0--", "scratch_b": "C0-"}
    for ax, counted in zip(axes, (False, True)):
        for name, r in report["runs"].items():
            off = pf if counted and not name.startswith("scratch") else 0.0
            pts = [(off + s * r["flops_per_step"], b) for s, b in r["curve"] if off + s * r["flops_per_step"] > 0]
            if pts:
                ax.plot(*zip(*pts), styles.get(name, "k-"), marker="o", ms=3, label=name)
        if counted:
            ax.axvline(pf, color="gray", lw=0.8, ls=":", label="token pretraining")
        ax.set(xscale="log", xlabel="training FLOPs" + (" incl. token pretraining" if counted else " (byte phase only)"),
               ylabel="valid bits per byte (held-out files)",
               title="pretraining counted" if counted else "pretraining not counted")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--token-config", default="configs/token_lm_gpu.py")
    p.add_argument("--config", default="configs/retnphi_gpu.py", help="the project's recipe")
    p.add_argument("--origin-config", default="configs/retnphi_origin.py", help="the origin code's recipe")
    p.add_argument("--out", default="runs/gpu_bootstrap")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--pretrain-mb", type=float, default=120.0, help="training text the token model reads (MB)")
    p.add_argument("--valid-mb", type=float, default=4.0, help="held-out text encoded for the token model's eval")
    p.add_argument("--pretrain-seconds", type=float, default=90.0)
    p.add_argument("--arm-seconds", type=float, default=30.0, help="per bootstrap arm")
    p.add_argument("--total-seconds", type=float, default=480.0, help="wall budget; cuts scratch_b")
    p.add_argument("--compile-allowance", type=float, default=45.0, help="seconds added to each phase's cap")
    p.add_argument("--tflops", type=float, default=150.0, help="assumed throughput that plans the pretraining's steps")
    p.add_argument("--arm-tflops", type=float, default=0.0,
                   help="throughput that plans the bootstrap arms' steps (0: the pretraining's measured TFLOP/s)")
    p.add_argument("--pretrain-steps", type=int, default=0, help="fixed steps instead of the time budget (tests)")
    p.add_argument("--arm-steps", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    cli.add_overrides(p, help="key=value for both byte recipes (data.* also sets the token model's files); "
                               "token.key=value for the token model only")
    a = cli.parse(p, argv)
    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    token_ov = [o[len("token."):] for o in a.overrides if o.startswith("token.")]
    byte_ov = [o for o in a.overrides if not o.startswith("token.")]
    base, origin = cli.load_config(a.config, byte_ov), cli.load_config(a.origin_config, byte_ov)
    tcfg = cli.load_config(a.token_config, [f"data.{k}={base.data[k]}" for k in DATA_KEYS] + token_ov)  # same split
    corpus = load_corpus(base.data)
    print(f"[gpu_bootstrap] {corpus.summary()}")
    hf, pre = pretrain_token_model(tcfg, corpus, out / "token", pretrain_mb=a.pretrain_mb, valid_mb=a.valid_mb,
                                   seconds=a.pretrain_seconds, tflops=a.tflops, steps=a.pretrain_steps,
                                   compile_allowance=a.compile_allowance)
    print(f"[gpu_bootstrap] token model: {pre['steps']} steps, {pre['train_flops']:.3g} FLOPs, {pre['seconds']:.0f} s")
    runs = run_arms(a, base, origin, hf, pre, corpus, out, t0)
    report = {"pretrain": pre, "runs": runs, "checkpoint": str(hf), "seconds": time.perf_counter() - t0,
              "configs": {"token": a.token_config, "project": a.config, "origin": a.origin_config},
              "not_supported": "a packed 4-bit base: the origin arm's frozen weights are NF4-rounded but stored in "
                               "float32 (same numerics, no memory saving)"}
    md = table(report)
    write_report(out, md, report)
    plot(report, out / "bpb_vs_flops.png")
    print(md)
    print(f"[gpu_bootstrap] {report['seconds']:.0f} s; table.md, results.json, bpb_vs_flops.png -> {out}")
    return report


if __name__ == "__main__":
    cli.run_main(main)
