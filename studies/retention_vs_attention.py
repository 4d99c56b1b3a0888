"""Retention against a standard transformer on the same bytes, at equal parameters, equal FLOPs and equal time.

    python -m studies.retention_vs_attention --out runs/retention_vs_attention --budget 35 \\
        [--sizes s,m,l] [--archs retnet,transformer] [--evals 6] data.source=files data.paths=DIR
    python -m studies.retention_vs_attention --small --out /tmp/rva     # CPU check: one tiny size, ~40 s

The claim it tests (issue 16): the RetNet byte LM reaches the valid bpb of a Llama-style transformer of
the same size (hqf_jax.nn.transformer, model.arch=transformer) for the same training FLOPs, and runs
faster. Each (arch, size) trains with the shared trainer (the same as ``python -m train.lm`` on
configs/lm.py with the overrides this study prints) on the same bytes for ``--budget`` seconds of
training wall time, counted after the first (compiling) step and without the evaluations. RetNet
runs ``model.form=auto`` (the Pallas kernel on a GPU, chunkwise on a CPU); the transformer runs
``jax.nn.dot_product_attention`` (cuDNN flash attention on a GPU in bf16, XLA on a CPU).

Because the number of steps a budget buys is not known in advance, the learning rate warms up and
then stays constant (``train.min_lr_ratio=1``): no cosine tail for either arch, so the final numbers
are above what a schedule fitted to the budget reaches, equally for both. Valid bpb is measured at
``--evals`` evenly spaced points of the budget on the same held-out bytes.

Overrides after the options apply to every run, e.g. the data: ``data.source=files data.paths=DIR``
(docs/BENCHMARKS.md has the command that gathers a GPU machine's site-packages .py files into DIR).
Wall time: the corpus build + runs x (budget + setup, compile and evaluations, ~30-45 s on one GPU).
Output in ``--out``: table.md, results.json (every curve), bpb_vs_flops.png, bpb_vs_time.png, and one
run folder per (arch, size) under runs/ (config.json, metrics.jsonl; no checkpoints).

Timing: each check of the budget waits for the step to finish (one host sync per step), which costs
the same small share of each arch's step time.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from hqf_jax import cli
from hqf_jax.nn.retnet import count_params
from hqf_jax.report import write_report
from hqf_jax.trainer import lm_task, mfu
from hqf_jax.trainer.loop import train

CONFIG = "configs/lm.py"
ARCHS = ("retnet", "transformer")
# size -> model overrides (RetNet: qk_dim = d_model, v_dim = 2 d_model; the transformer is matched to it)
SIZES = {
    "s": dict(d_model=256, num_layers=4, num_heads=4, ffn_dim=832),
    "m": dict(d_model=512, num_layers=6, num_heads=4, ffn_dim=1728),
    "l": dict(d_model=768, num_layers=8, num_heads=6, ffn_dim=2560),
}
SMALL_SIZES = {
    "xs": dict(d_model=32, num_layers=2, num_heads=2, ffn_dim=96),
    "s": dict(d_model=48, num_layers=2, num_heads=2, ffn_dim=128),
}
GPU_RUN = dict(data=dict(seq_len=1024, batch_size=32), train=dict(lr=1e-3, warmup_steps=100, eval_max_bytes=1 << 20))
SMALL_RUN = dict(data=dict(seq_len=64, batch_size=8, max_files=20), train=dict(lr=3e-3, warmup_steps=10,
                                                                             eval_max_bytes=4096))
NEVER = 10**9  # steps: the budget ends the run, never the step count


class BudgetSpent(Exception):
    """Raised by the clock hook to end a run when its training-time budget is spent."""


class Clock:
    """A trainer hook: counts training wall time from the end of the first step, evaluates at evenly
    spaced marks of the budget (eval time not counted) and ends the run when the budget is spent."""

    def __init__(self, task, budget_s: float, evals: int):
        self.task, self.budget, self.evals = task, float(budget_s), int(evals)
        self.graphdef, _, self.rest = nnx.split(task.model, task.trainable, ...)
        self.points: list[dict] = []
        self.train_s, self.t_prev, self.t_start = 0.0, None, time.perf_counter()
        self.first_step_s = float("nan")

    def _evaluate(self, step: int, state) -> None:
        model = nnx.merge(self.graphdef, state["params"], self.rest)
        ev = self.task.eval_fn(model)
        self.points.append({"step": step, "train_s": self.train_s, "flops": step * self.task.flops_per_step,
                            "bytes": step * self.task.units_per_step, "valid_bpb": ev["valid_bpb"]})
        print(f"  step {step}: {self.train_s:.1f} s, valid_bpb {ev['valid_bpb']:.4f}", flush=True)

    def __call__(self, step, state, writer, last):
        jax.block_until_ready(state["step"])
        now = time.perf_counter()
        if self.t_prev is None:  # the first step: compile + run, not counted
            self.first_step_s = now - self.t_start
        else:
            self.train_s += now - self.t_prev
        mark = self.budget * (len(self.points) + 1) / self.evals
        if self.train_s >= mark or self.train_s >= self.budget:
            self._evaluate(step, state)
        self.t_prev = time.perf_counter()  # evaluation time is not training time
        if self.train_s >= self.budget:
            raise BudgetSpent
        return state


def run_config(arch: str, size: dict, small: bool, overrides: list[str]):
    run = SMALL_RUN if small else GPU_RUN
    d = size["d_model"]
    words = [f"model.arch={arch}", f"model.qk_dim={d}", f"model.v_dim={2 * d}", "model.form=auto",
             f"model.compute_dtype={'float32' if small or jax.default_backend() == 'cpu' else 'bfloat16'}"]
    words += [f"model.{k}={v}" for k, v in size.items()]
    words += [f"{sec}.{k}={v}" for sec, kv in run.items() for k, v in kv.items()]
    words += [f"train.steps={NEVER}", "train.min_lr_ratio=1.0", f"train.eval_every={NEVER}",
              f"train.sample_every={NEVER}", f"train.ckpt_every={NEVER}", "train.log_every=50"]
    words += list(overrides)  # the user's last: data paths, or a different lr
    return cli.load_config(CONFIG, words), words  # validated (hqf_jax.config_checks) like any entry point's


def run_one(arch: str, size_name: str, size: dict, a, corpus, out: Path) -> dict:
    cfg, words = run_config(arch, size, a.small, a.overrides)
    workdir = out / "runs" / f"{arch}-{size_name}"
    if workdir.exists():
        shutil.rmtree(workdir)  # this study's own run folder: start afresh, never resume
    print(f"[rva] {arch} {size_name}: python -m train.lm --config {CONFIG} " + " ".join(words), flush=True)
    task, _ = lm_task.build_task(cfg, corpus)
    clock = Clock(task, a.budget, a.evals)
    task.interventions = [clock]
    try:
        train(task, cfg.train, cfg.mesh, workdir, cli.config_to_json(cfg), progress=False)
    except BudgetSpent:
        pass
    last = clock.points[-1]
    step_s = last["train_s"] / max(last["step"] - 1, 1)  # steps after the first, over the counted time
    tflops = task.flops_per_step / step_s / 1e12
    peaks = a.peaks
    return {
        "arch": arch, "size": size_name, "params": count_params(task.model),
        "model": {k: v for k, v in cfg.model.items()}, "form": _form(task.model),
        "flops_per_byte": task.flops_per_step / task.units_per_step, "steps": last["step"],
        "bytes": last["bytes"], "train_s": last["train_s"], "first_step_s": clock.first_step_s,
        "step_ms": 1e3 * step_s, "tflops": tflops, **mfu.mfu_metrics(tflops, peaks),
        "final_valid_bpb": last["valid_bpb"], "best_valid_bpb": min(p["valid_bpb"] for p in clock.points),
        "points": clock.points,
    }


def _form(model) -> str:
    from hqf_jax.nn.retnet import RetNetLM, resolve_form
    from hqf_jax.ops.attention import resolve_impl

    if isinstance(model, RetNetLM):
        return f"retention {resolve_form(model.cfg.form)}"
    return f"attention {resolve_impl(model.cfg.attention_impl, model.cfg.compute_dtype)}"


def interp(points: list[dict], key: str, x: float, log: bool = False) -> float:
    """valid bpb of a curve at ``x`` of ``key`` (linear, or linear in log x); nan outside the curve."""
    xs = np.array([p[key] for p in points], float)
    ys = np.array([p["valid_bpb"] for p in points], float)
    if not len(xs) or x < xs[0] - 1e-9 or x > xs[-1] + 1e-9:
        return float("nan")
    f = np.log if log else (lambda v: v)
    return float(np.interp(f(x), f(xs), ys))


def gaps(rows: list[dict]) -> list[dict]:
    """Per size: each arch's bpb at the FLOPs (and the seconds) both reached, and retention's relative gap."""
    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        by = {r["arch"]: r for r in rows if r["size"] == size}
        if set(by) != set(ARCHS):
            continue
        ret, att = by["retnet"], by["transformer"]
        g = {"size": size}
        for key, log, name in (("flops", True, "flops"), ("train_s", False, "time")):
            x = min(ret["points"][-1][key], att["points"][-1][key])
            r, t = interp(ret["points"], key, x, log), interp(att["points"], key, x, log)
            g[f"equal_{name}"] = {"at": x, "retnet_bpb": r, "transformer_bpb": t, "gap": r / t - 1}
        out.append(g)
    return out


def table(rows: list[dict], gap_rows: list[dict], a, device: str) -> str:
    lines = [f"# Retention vs a standard transformer on the same bytes ({device})", "",
             f"Budget {a.budget:g} s of training per run (after the compiling step, evaluations not counted); "
             f"constant learning rate after warm-up; valid bpb on the same held-out bytes. MFU: model FLOP/s over "
             f"the spec dense bf16 peak ({a.peaks.get('spec_tflops', 'unknown')} TFLOP/s) and over a bf16 matmul "
             f"measured in this run ({a.peaks.get('measured_tflops', float('nan')):.0f} TFLOP/s).", "",
             "| arch | size | form | params | FLOPs/byte | steps | bytes | step ms | TFLOP/s | MFU spec | "
             "MFU measured | setup + compile s | final bpb | best bpb |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    pct = lambda v: f"{100 * v:.1f}%" if v is not None and math.isfinite(v) else "-"
    for r in rows:
        lines.append(f"| {r['arch']} | {r['size']} | {r['form']} | {r['params']:,} | "
                     f"{r['flops_per_byte'] / 1e6:.1f}M | "
                     f"{r['steps']} | {r['bytes'] / 1e6:.1f}M | {r['step_ms']:.1f} | {r['tflops']:.1f} | "
                     f"{pct(r.get('mfu_spec'))} | {pct(r.get('mfu_measured'))} | {r['first_step_s']:.1f} | "
                     f"{r['final_valid_bpb']:.4f} | {r['best_valid_bpb']:.4f} |")
    lines += ["", "Retention against the transformer of the same size (negative: retention lower, i.e. better):", "",
              "| size | at equal FLOPs | retnet bpb | transformer bpb | gap | at equal time (s) | retnet bpb | "
              "transformer bpb | gap |", "|---|---|---|---|---|---|---|---|---|"]
    for g in gap_rows:
        f, t = g["equal_flops"], g["equal_time"]
        lines.append(f"| {g['size']} | {f['at']:.3g} | {f['retnet_bpb']:.4f} | {f['transformer_bpb']:.4f} | "
                     f"{pct(f['gap'])} | {t['at']:.1f} | {t['retnet_bpb']:.4f} | {t['transformer_bpb']:.4f} | "
                     f"{pct(t['gap'])} |")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    colors = {s: plt.cm.viridis(i / max(len(sizes) - 1, 1)) for i, s in enumerate(sizes)}
    for key, label, log, name in (("flops", "training FLOPs", True, "bpb_vs_flops.png"),
                                  ("train_s", "training wall time (s)", False, "bpb_vs_time.png")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in rows:
            xs = [p[key] for p in r["points"]]
            ys = [p["valid_bpb"] for p in r["points"]]
            ax.plot(xs, ys, "-o" if r["arch"] == "retnet" else "--s", color=colors[r["size"]], ms=3, lw=1.3,
                    label=f"{r['arch']} {r['size']} ({r['params'] / 1e6:.3g}M params)")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("valid bits per byte")
        ax.set_title(f"retention (solid) vs transformer (dashed): valid bpb vs {label}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        paths.append(out / name)
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/retention_vs_attention")
    p.add_argument("--budget", type=float, default=None, help="training seconds per run (default 60; --small 2)")
    p.add_argument("--sizes", default=None, help=f"comma list of {sorted(SIZES)} (default all; --small: "
                                                 f"{sorted(SMALL_SIZES)}, default xs)")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--evals", type=int, default=6, help="valid bpb points per run, evenly spaced in the budget")
    p.add_argument("--small", action="store_true", help="tiny models on the stdlib for a CPU check")
    cli.add_overrides(p, "config overrides for every run (key=value), e.g. data.paths=DIR")
    a = cli.parse(p, argv)
    table_sizes = SMALL_SIZES if a.small else SIZES
    a.budget = a.budget if a.budget is not None else (2.0 if a.small else 60.0)
    if a.small:
        a.evals = min(a.evals, 2)
    names = [s.strip() for s in (a.sizes or ("xs" if a.small else ",".join(table_sizes))).split(",") if s.strip()]
    archs = [s.strip() for s in a.archs.split(",") if s.strip()]
    for s in names:
        if s not in table_sizes:
            raise cli.ConfigError(f"--sizes: unknown size {s!r}; sizes: {sorted(table_sizes)}")
    for arch in archs:
        if arch not in ARCHS:
            raise cli.ConfigError(f"--archs: unknown arch {arch!r}; archs: {list(ARCHS)}")
    out = Path(a.out)
    dev = jax.devices()[0]
    device = f"{dev.device_kind} ({jax.default_backend()})"
    print(f"[rva] {device}; {len(names) * len(archs)} runs of {a.budget:g} s of training each, plus compiles "
          f"and evaluations", flush=True)
    a.peaks = mfu.device_peaks()
    cfg0, _ = run_config(archs[0], table_sizes[names[0]], a.small, a.overrides)
    t = time.perf_counter()
    corpus = lm_task.load_corpus(cfg0.data)  # once: every run reads the same bytes
    print(f"[rva] corpus in {time.perf_counter() - t:.1f} s: {corpus.summary()}", flush=True)
    rows = []
    for s in names:
        for arch in archs:
            rows.append(run_one(arch, s, table_sizes[s], a, corpus, out))
            # the report so far, after every run: a study cut short by a time limit keeps what it measured
            gap_rows = gaps(rows)
            md = table(rows, gap_rows, a, device)
            write_report(out, md, {"device": device, "budget_s": a.budget, "peaks": a.peaks, "runs": rows,
                                   "gaps": gap_rows, "corpus": corpus.summary()})
            plots = plot(rows, out)
    print("\n" + md)
    print(f"\n[rva] {out / 'table.md'}, {out / 'results.json'}, " + ", ".join(str(x) for x in plots))
    return rows, gap_rows


if __name__ == "__main__":
    cli.run_main(main)
