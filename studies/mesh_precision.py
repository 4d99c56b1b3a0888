"""Why 1-device, data-parallel and FSDP runs end at different bf16 losses: reduction order, measured.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m studies.mesh_precision
    python -m studies.mesh_precision --config configs/lm_125m.py --steps 30 model.form=pallas   # on 2+ GPUs

The same training (config, seed, batches) runs in float32 and in bfloat16 compute on one device, on
one device with the rows of every batch permuted (the same mathematics; only the order in which the
per-row gradients are summed changes), data parallel, FSDP and tensor parallel (Megatron's column/row
split of heads and MLP) over all devices. With `model.form=pallas` every arm runs the Pallas retention
kernel (under a mesh, per device inside a shard_map).
If a mesh's gap to the 1-device run is of the size of the permuted run's gap, the mesh is exact
up to summation order and the gap is rounding noise that training amplifies; if it is far larger,
the sharded step computes something else. Writes table.md, results.json and a plot into --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from hqf_jax import cli
from hqf_jax.data.catalog import load_corpus
from hqf_jax.report import write_report
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.loop import train
from hqf_jax.trainer.metrics import read_metrics


def permuted(batch_fn, seed: int = 1):
    """The same batches with their rows in another (fixed) order."""

    def fn(step):
        b = batch_fn(step)
        order = np.random.default_rng(seed).permutation(len(next(iter(b.values()))))
        return {k: v[order] for k, v in b.items()}

    return fn


ARMS = ("1", "1 permuted rows", "data parallel", "fsdp", "tensor parallel")


def run(cfg, corpus, arm: str, workdir: Path) -> tuple[list[float], float | None]:
    """The arm's loss at every step, and its steady-state step time (s; the last logged window)."""
    n = jax.device_count()
    mesh = {"1": (1, 1, 1), "1 permuted rows": (1, 1, 1), "data parallel": (n, 1, 1), "fsdp": (1, n, 1),
            "tensor parallel": (1, 1, n)}[arm]
    cfg = cli.apply_overrides(cfg, [f"mesh.{a}={s}" for a, s in zip(("data", "fsdp", "tensor"), mesh)])
    task, _ = lm_task.build_task(cfg, corpus)
    task.eval_fn = task.sample_fn = None
    if arm.endswith("permuted rows"):
        task.batch_fn = permuted(task.batch_fn)
    train(task, cfg.train, cfg.mesh, workdir, progress=False, devices=jax.devices()[: int(np.prod(mesh))])
    rows = read_metrics(workdir)
    rates = [r[f"{task.unit_name}_per_s"] for r in rows if r.get(f"{task.unit_name}_per_s")]
    return [r["loss"] for r in rows if "loss" in r], (task.units_per_step / rates[-1] if rates else None)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5), squeeze=False)
    for ax, (dtype, arms) in zip(axes[0], results.items()):
        arms = {arm: r["losses"] for arm, r in arms.items()}
        ref = np.asarray(arms["1"])
        for arm, losses in arms.items():
            if arm != "1":
                ax.semilogy(np.arange(1, len(ref) + 1), np.abs(np.asarray(losses) - ref) + 1e-9, label=arm)
        ax.set_title(f"{dtype}: |loss - 1-device loss|")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/lm_tiny.py")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)} ('1' always runs)")
    p.add_argument("--out", default="runs/studies/mesh_precision")
    cli.add_overrides(p, "config overrides key.sub=value (every run)")
    a = cli.parse(p, argv)
    unknown = set(a.arms.split(",")) - set(ARMS)
    if unknown:
        raise cli.ConfigError(f"unknown arm(s) {sorted(unknown)}; known: {', '.join(ARMS)}")
    a.arms = ",".join(["1"] + [x for x in a.arms.split(",") if x != "1"])
    if jax.device_count() < 2:
        raise cli.ConfigError("this study needs 2+ devices; on a CPU set "
                              "XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu")
    base = cli.load_config(a.config, [
        f"train.steps={a.steps}", "train.log_every=1", f"train.ckpt_every={a.steps}", f"train.warmup_steps={max(1, a.steps // 10)}",
        f"train.eval_every={a.steps * 10}", f"train.sample_every={a.steps * 10}", *a.overrides])
    corpus = load_corpus(base.data)
    out = Path(a.out)
    results: dict[str, dict[str, dict]] = {}
    for dtype in a.dtypes.split(","):
        cfg = cli.apply_overrides(base, [f"model.compute_dtype={dtype}"])
        results[dtype] = {}
        for arm in a.arms.split(","):
            losses, step_s = run(cfg, corpus, arm, out / "runs" / dtype / arm.replace(" ", "_"))
            results[dtype][arm] = {"losses": losses, "step_s": step_s}
            # what has run so far, so a run cut short keeps its arms
            write_report(out, "(partial: the table is written when every arm has run)",
                         {"device_count": jax.device_count(), "steps": a.steps, "losses": results})
    lines = [f"{jax.device_count()} x {jax.devices()[0].device_kind}; {a.config} (model.form={base.model.form}), "
             f"{a.steps} steps; gap = |loss - the 1-device run's loss|; step time = the last logged window", "",
             "| compute | run | final loss | max gap over the run | gap at the last step | step time (ms) |",
             "|---|---|---|---|---|---|"]
    for dtype, arms in results.items():
        ref = np.asarray(arms["1"]["losses"])
        for arm, r in arms.items():
            gap = np.abs(np.asarray(r["losses"]) - ref)
            ms = f"{r['step_s'] * 1e3:.1f}" if r["step_s"] else "-"
            lines.append(f"| {dtype} | {arm} | {r['losses'][-1]:.4f} | {gap.max():.2e} | {gap[-1]:.2e} | {ms} |")
    table = "\n".join(lines)
    print(table)
    write_report(out, table, {"device_count": jax.device_count(), "steps": a.steps, "losses": results})
    plot(results, out / "mesh_precision.png")
    print(f"[study] -> {out}")
    return results


if __name__ == "__main__":
    cli.run_main(main)
