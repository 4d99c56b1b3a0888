"""The table and the curves of studies.kolmogorov_gpu (its results dict -> markdown, png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WINDOW_KEYS = ("reward", "fidelity", "ratio", "used", "gate", "signal")


def by_level(curve: list[dict]) -> list[dict]:
    """Means of the training curve over each stretch at one constraint level (rl/relax_n: the items injected and
    banned per source, lowered by the relaxation schedule on a plateau): {"n", "from", "to", key: mean}. "used"
    is 1 by definition where n = 0 (nothing to use), so the hack shows only at n > 0."""
    out: list[dict] = []
    for c in curve:
        n = c.get("relax_n")
        if not out or out[-1]["n"] != n:
            out.append({"n": n, "from": c["step"], "rows": []})
        out[-1]["to"] = c["step"]
        out[-1]["rows"].append(c)
    for w in out:
        rows = w.pop("rows")
        for k in WINDOW_KEYS:
            v = np.array([np.nan if r.get(k) is None else r[k] for r in rows], float)
            w[k] = float(np.nanmean(v)) if np.isfinite(v).any() else None
    return out


def table(r: dict) -> str:
    pre, warm, base = r["pretrain"], r["warm"], r["baselines_bpb"]
    lines = [f"model {r['params']:,} parameters; data {r['data']}; device {r['device']}; total {r['wall_s']:.0f} s",
             f"pretrain {pre['steps']} steps ({pre['seconds']:.0f} s): valid bpb {pre['valid_bpb']:.3f}",
             f"warm start {warm['steps']} steps ({warm['seconds']:.0f} s): round trip chrF {warm['after']['fidelity']:.3f}"
             f" (before {warm['before']['fidelity']:.3f}), code/source {warm['after']['ratio']:.3f}, codec-exact "
             f"{warm['after']['codec_exact']:.2f}", "",
             f"held-out: {r['eval_sources']} sources of {r['source_len']} bytes; bits per byte (8 = raw)", "",
             "| method | bpb | success | chrF best | gain (frozen LM) |", "|---|---|---|---|---|"]
    for k, v in base.items():
        lines.append(f"| {k} | {v:.3f} | 1 | 1 | - |")
    lines.append(f"| pretrained LM arithmetic-coding bound (lossless) | {r['pretrained_ac_bpb']:.3f} | 1 | 1 | - |")
    for name, a in r["arms"].items():
        if "heldout" not in a:
            why = f"failed: {a['error']}" if "error" in a else f"not run: {a.get('skipped')}"
            lines.append(f"| {name} | {why.replace('|', '/')} | | | |")
            continue
        h = a["heldout"]
        for tau in (0.5, 0.9):
            lines.append(f"| {name} ({a['steps']} steps) @chrF>={tau} | {h[f'bpb@{tau:g}']:.3f} | "
                         f"{h[f'success@{tau:g}']:.2f} | {h['mean_best_chrf']:.3f} | {h.get('mean_gain_of_best', 0):.3f} |")
        lines.append(f"| {name} policy AC bound | {a['ac_bound_bpb']:.3f} | 1 | 1 | - |")
    lines += ["", "| arm | steps | train s | first step s | eval reward | fidelity | code/source | items used | gate | "
              "signal | copied (var<0.1) | clip frac |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in r["arms"].items():
        if "eval_episode" in a:
            e, h = a["eval_episode"], a["hack"]
            f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
            lines.append(f"| {name} | {a['steps']} | {a['seconds']:.1f} | {a['first_step_s']:.1f} | {e['reward']:.3f} | {e['fidelity']:.3f} | {e['ratio']:.3f} | {f(h['used'])} | "
                         f"{f(h['gate'])} | {f(h['signal'])} | {f(h['copied_frac'])} | "
                         f"{f(float(np.mean([x['clip_frac'] for x in a['loss_log']])) if a['loss_log'] else None)} |")
    lines += ["", "Training curve by constraint level (means; `signal` = varentropy at the used items, nats^2):", "",
              "| arm | steps | items n | reward | fidelity | code/source | items used | gate | signal |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, a in r["arms"].items():
        for w in by_level(a.get("curve") or []):
            lines.append(f"| {name} | {w['from']}-{w['to']} | {w['n']:g} | " + " | ".join(
                "-" if w[k] is None else f"{w[k]:.3f}" for k in WINDOW_KEYS) + " |")
    return "\n".join(lines)


def plot(r: dict, out: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, a in r["arms"].items():
        c = a.get("curve") or []
        for ax, key in zip(axes, ("reward", "fidelity", "ratio")):
            ax.plot([x["step"] for x in c], [x.get(key, np.nan) for x in c], label=name, lw=1.2)
            ax.set_title({"ratio": "code length / source length"}.get(key, key))
            ax.set_xlabel("GRPO step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    return str(out / "curves.png")
