"""The training chamber on the music path: every intervention against plain early stopping, at equal steps.

    python -m studies.chamber --out runs/chamber [--arms none,shrink_perturb,rewarm,noise,ema]
                                 [--samples 32] [--skip-train] [key=value ...]

Each arm trains configs/music_chamber.py for the same number of steps (overrides after the options
apply to every arm, e.g. train.steps=300), in ``<out>/<arm>``; the run is the same as
``python -m train.lm --config configs/music_chamber.py --workdir <out>/<arm> <arm's overrides>``.
Then, per arm, the final checkpoint is scored like eval.music_eval (hqf_jax.scoring.music: test bpb on the held-out tunes
past the validation window, i.e. bytes that neither the plateau triggers nor early stopping looked
at; generated tunes parsed by music21, bars against the meter, copying), and the plain arm
(``none``) is also scored at its best logged validation step: that is early stopping.

"Past the plateau" means: the arm's best validation bpb after its first intervention is lower than
its best before it (a plateau event marks the point; the plain arm logs it too). The table, a JSON
and a PNG of the validation curves with the intervention events go to ``<out>``.
"""

from __future__ import annotations

from hqf_jax.report import save_figure

import argparse
import json
from pathlib import Path

from hqf_jax import cli
from hqf_jax.scoring import music as music_eval
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.loop import train
from hqf_jax.trainer.metrics import read_metrics

CONFIG = "configs/music_chamber.py"
ARMS: dict[str, list[str]] = {
    "none": ["chamber.interventions=none"],
    "shrink_perturb": ["chamber.interventions=shrink_perturb"],
    "rewarm": ["chamber.interventions=rewarm"],
    "noise": ["chamber.interventions=noise"],
    "ema": ["chamber.interventions=ema", "chamber.ema_swap_at_end=True"],
    "ema_swap": ["chamber.interventions=ema,ema_swap"],
    "sp_rewarm": ["chamber.interventions=shrink_perturb,rewarm"],
}
INTERVENTION_EVENTS = ("shrink_perturb", "rewarm", "weight_noise", "ema_swap")


def arm_config(arm: str, common: list[str]):
    if arm not in ARMS:
        raise cli.ConfigError(f"unknown arm {arm!r}; arms: {sorted(ARMS)}")
    return cli.load_config(CONFIG, ARMS[arm] + list(common))


def curve(workdir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, str]]]:
    vals, events = [], []
    for row in read_metrics(workdir):
        if "valid_bpb" in row:
            vals.append((row["step"], row["valid_bpb"]))
        if "event" in row:
            events.append((row["step"], json.loads(row["event"])["event"]))
    return vals, events


def plateau_summary(vals, events) -> dict:
    first = next((s for s, e in events if e in INTERVENTION_EVENTS or e == "plateau"), None)
    first_iv = next((s for s, e in events if e in INTERVENTION_EVENTS), None)
    best = min(vals, key=lambda x: x[1]) if vals else (None, float("nan"))
    out = {"best_valid_bpb": best[1], "best_step": best[0], "first_plateau_step": first,
           "final_valid_bpb": vals[-1][1] if vals else float("nan"),
           "interventions": sum(e in INTERVENTION_EVENTS for _, e in events)}
    mark = first_iv if first_iv is not None else first
    if mark is not None:
        before = [v for s, v in vals if s < mark]
        after = [v for s, v in vals if s >= mark]
        out["best_before"] = min(before) if before else float("nan")
        out["best_after"] = min(after) if after else float("nan")
        out["past_plateau"] = bool(before and after and min(after) < min(before))
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, r in results.items():
        steps, vals = zip(*r["curve"]) if r["curve"] else ((), ())
        (line,) = ax.plot(steps, vals, label=arm, lw=1.2)
        for s, e in r["events"]:
            if e in INTERVENTION_EVENTS:
                ax.axvline(s, color=line.get_color(), ls=":", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out bpb")
    ax.set_title("music path: validation bpb per arm (dotted: interventions)", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None):

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/chamber")
    p.add_argument("--arms", default="none,shrink_perturb,rewarm,noise,ema")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--skip-train", action="store_true", help="score existing runs in --out")
    cli.add_overrides(p, help="config overrides for every arm (key=value)")
    a = cli.parse(p, argv)
    out = Path(a.out)
    arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    results: dict = {}
    for arm in arms:
        cfg = arm_config(arm, a.overrides)
        workdir = out / arm
        cmd = f"python -m train.lm --config {CONFIG} --workdir {workdir} " + " ".join(ARMS[arm] + a.overrides)
        print(f"[chamber] {arm}: {cmd}")
        if not a.skip_train:
            task, _ = lm_task.build_task(cfg)
            train(task, cfg.train, cfg.mesh, workdir, cli.config_to_json(cfg))
        vals, events = curve(workdir)
        r = {"command": cmd, "curve": vals, "events": events, **plateau_summary(vals, events)}
        # test bytes: the held-out tunes past the validation window that triggers and early stopping saw
        skip = int(cfg.train.eval_max_bytes)
        r["final"] = music_eval.measure(str(workdir), samples=a.samples, temperature=a.temperature, skip_bytes=skip)
        if arm == "none":
            r["early_stop"] = music_eval.measure(str(workdir), best=True, samples=a.samples, temperature=a.temperature,
                                                 skip_bytes=skip)
        results[arm] = r
    out.mkdir(parents=True, exist_ok=True)
    (out / "chamber_study.json").write_text(json.dumps(results, indent=2, default=str))
    plot(results, out / "chamber_study.png")
    print_table(results)
    print(f"\n[chamber] {out / 'chamber_study.json'}, {out / 'chamber_study.png'}")


def print_table(results: dict) -> None:
    print(f"\n{'arm':<20} {'step':>5} {'test bpb':>9} {'best val':>9} {'plateau':>8} {'#iv':>4} {'past?':>6} "
          f"{'parse':>6} {'meter':>6} {'bars ok':>7} {'copies':>7} {'LCS':>5}")
    rows = []
    for arm, r in results.items():
        if "early_stop" in r:
            rows.append(("none: early stop", r, r["early_stop"]))
        rows.append((arm + (": final" if arm == "none" else ""), r, r["final"]))
    for label, r, m in rows:
        past = {True: "yes", False: "no"}.get(r.get("past_plateau"), "-") if "early" not in label else "-"
        print(f"{label:<20} {m['step']:>5} {m['model_bpb']:>9.4f} {r['best_valid_bpb']:>9.4f} "
              f"{str(r['first_plateau_step'] or '-'):>8} {r['interventions']:>4} {past:>6} {m['sample_parse']:>6.1%} "
              f"{m['sample_meter']:>6.1%} {m['sample_good_bars']:>7.1%} {m['sample_copies']:>7.1%} "
              f"{m['sample_lcs_median']:>5.0f}")
    any_r = next(iter(results.values()))["final"]
    print(f"(real held-out tunes: parse {any_r['real_parse']:.1%}, meter {any_r['real_meter']:.1%}, "
          f"bars ok {any_r['real_good_bars']:.1%}, "
          f"LCS median {any_r['real_lcs_median']:.0f}; gzip {any_r['gzip -9']:.4f}, xz {any_r['xz -9e']:.4f}, "
          f"xz | train {any_r['xz | train']:.4f} bits/byte)")


if __name__ == "__main__":
    cli.run_main(main)
