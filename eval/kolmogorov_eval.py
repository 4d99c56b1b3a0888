"""Honest evaluation of the Kolmogorov compressor on held-out sources.

    python -m eval.kolmogorov_eval --run runs/grpo [--num 64] [--samples 8] [--threshold 0.9] [--out DIR]
    python -m eval.kolmogorov_eval --config configs/grpo_tiny.py     (an untrained policy: a smoke check)

For every held-out source s the policy's C writes ``--samples`` sampled codes and one greedy code;
D decodes each greedily; V scores fidelity (the run's rl.fidelity). At a threshold tau, the policy's
size for s is its shortest code with fidelity >= tau, and len(s) (s stored raw) when none reaches tau.
Beside it, on the same bytes:

* the policy's own arithmetic-coding bound: -sum log2 p(s_t | BOS s_<t) (+ the EOS) under the same
  weights used as a plain byte LM, in bytes (lossless; a real arithmetic coder is within 2 bits of it);
* zlib (raw deflate, level 9) and lzma (raw LZMA2, preset 9e) of each s alone (no container headers:
  the policy's codes carry none either), and of all sources concatenated as one stream (which gives
  the classical coders context across sources that the policy never sees).

Ratios are compressed bytes / original bytes (lower is better). The policy's codes are lossy below
tau = 1; the other rows are lossless. Writes kolmogorov_eval.json, kolmogorov_eval.md and
kolmogorov_eval.png to --out (default: the run folder, or runs/kolmogorov_eval).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from hqf_jax import cli
from hqf_jax.rl import kolmogorov as kg
from hqf_jax.rl.compress_score import ac_bound_bytes, lzma_raw, zlib_raw
from hqf_jax.rl.fidelity import fidelity as byte_fidelity
from hqf_jax.rl.grpo_task import kolmogorov_config
from hqf_jax.rl.rollout import SampleConfig, completion_bytes, encode_prompts, rollout
from hqf_jax.rl.sources import make_source

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
def policy_codes(model, sources: list[bytes], kcfg: kg.KolmogorovConfig, samples: int, seed: int,
                 batch: int = 8) -> list[list[tuple[bytes, float]]]:
    """For each source: [(code, fidelity of D's greedy decoding)] for `samples` sampled codes + 1 greedy."""
    greedy = SampleConfig(max_new_tokens=kcfg.code_budget, top_k=1)
    out = []
    key = jax.random.PRNGKey(seed)
    for i in tqdm(range(0, len(sources), batch), desc="eval", unit="batch"):
        chunk = sources[i:i + batch]
        prompts = [kg.compressor_prompt(s) for s in chunk]
        toks, lens = encode_prompts([p for p in prompts for _ in range(samples)], width=kcfg.prompt_width)
        sampled = completion_bytes(rollout(model, toks, lens, jax.random.fold_in(key, 2 * i), kcfg.c_sample))
        toks, lens = encode_prompts(prompts, width=kcfg.prompt_width)
        greedy_codes = completion_bytes(rollout(model, toks, lens, jax.random.fold_in(key, 2 * i + 1), greedy))
        codes = [sampled[j * samples:(j + 1) * samples] + [greedy_codes[j]] for j in range(len(chunk))]
        flat = [c for cs in codes for c in cs]
        toks, lens = encode_prompts([kg.decompressor_prompt(c) for c in flat], width=kcfg.prompt_width)
        recons = completion_bytes(rollout(model, toks, lens, jax.random.fold_in(key, 10**6 + i), kcfg.d_sample))
        kind = "chrf" if kcfg.fidelity == "loglik" else kcfg.fidelity
        k = 0
        for s, cs in zip(chunk, codes):
            out.append([(c, byte_fidelity(s, recons[k + j], kind)) for j, c in enumerate(cs)])
            k += len(cs)
    return out


def evaluate(model, cfg, num: int, samples: int, threshold: float, seed: int = 0) -> dict:
    kcfg = kolmogorov_config(cfg.rl)
    split = "valid" if cfg.rl.source == "corpus" else "train"
    sources = make_source(cfg.rl, cfg.get("data"), split)(np.random.default_rng([seed, 7919]), num)
    total = sum(len(s) for s in sources)
    codes = policy_codes(model, sources, kcfg, samples, seed)
    curve = {}
    for tau in sorted(set(THRESHOLDS) | {threshold}):
        sizes, ok = [], []
        for s, cs in zip(sources, codes):
            good = [len(c) for c, f in cs if f >= tau]
            ok.append(bool(good))
            sizes.append(min(good) if good else len(s))
        succ_bytes = sum(len(s) for s, o in zip(sources, ok) if o)
        curve[tau] = {"ratio": sum(sizes) / total, "success": float(np.mean(ok)),
                      "ratio_success_only": (sum(sz for sz, o in zip(sizes, ok) if o) / succ_bytes
                                             if succ_bytes else None)}
    best_fid = float(np.mean([max(f for _, f in cs) for cs in codes]))
    greedy_len = float(np.mean([len(cs[-1][0]) / len(s) for s, cs in zip(sources, codes)]))
    ac = ac_bound_bytes(model, sources)
    stream = b"".join(sources)
    rows = {
        f"policy C->D @ fidelity>={threshold:g} (best of {samples}+greedy, raw fallback)": curve[threshold]["ratio"],
        "policy arithmetic-coding bound (lossless)": float(ac.sum() / total),
        "zlib -9 raw, per source": sum(zlib_raw(s) for s in sources) / total,
        "lzma 9e raw, per source": sum(lzma_raw(s) for s in sources) / total,
        "zlib -9 raw, one stream": zlib_raw(stream) / total,
        "lzma 9e raw, one stream": lzma_raw(stream) / total,
    }
    return {"num_sources": num, "bytes": total, "threshold": threshold, "samples": samples,
            "success_at_threshold": curve[threshold]["success"], "mean_best_fidelity": best_fid,
            "greedy_code_ratio": greedy_len, "ratios": rows,
            "curve": {str(k): v for k, v in curve.items()},
            "examples": [{"s": s.decode("latin-1"), "greedy_code": cs[-1][0].decode("latin-1"),
                          "greedy_fidelity": cs[-1][1]} for s, cs in list(zip(sources, codes))[:4]]}


def table(r: dict) -> str:
    lines = [f"held-out sources: {r['num_sources']} ({r['bytes']} bytes); success at fidelity>={r['threshold']:g}: "
             f"{r['success_at_threshold']:.2f}; mean best fidelity {r['mean_best_fidelity']:.3f}",
             "", "| method | compressed / original |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["ratios"].items()]
    lines += ["", "| fidelity threshold | policy ratio (raw fallback) | success | ratio on successes |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['ratio']:.3f} | {v['success']:.2f} | "
              + ("-" if v["ratio_success_only"] is None else f"{v['ratio_success_only']:.3f}") + " |"
              for k, v in r["curve"].items()]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(r["ratios"])
    a.barh(range(len(names)), [r["ratios"][n] for n in names], color=["C3", "C2", "C0", "C0", "C1", "C1"])
    a.set_yticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=7)
    a.axvline(1.0, color="k", lw=0.8, ls=":")
    a.set_xlabel("compressed / original bytes (lower is better)")
    a.invert_yaxis()
    taus = [float(k) for k in r["curve"]]
    b.plot(taus, [v["ratio"] for v in r["curve"].values()], "o-", label="policy ratio (raw fallback)")
    b.plot(taus, [v["success"] for v in r["curve"].values()], "s--", label="success rate")
    b.axhline(r["ratios"]["policy arithmetic-coding bound (lossless)"], color="C2", ls=":", label="AC bound")
    b.axhline(r["ratios"]["lzma 9e raw, per source"], color="C0", ls=":", label="lzma per source")
    b.set_xlabel("fidelity threshold")
    b.legend(fontsize=8)
    fig.suptitle(f"Kolmogorov compressor on {r['num_sources']} held-out sources ({r['bytes']} bytes)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", help="a GRPO run folder (python -m train.grpo)")
    g.add_argument("--config", help="a GRPO config: evaluate its freshly initialised policy (smoke check)")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--num", type=int, default=64, help="held-out sources")
    p.add_argument("--samples", type=int, default=8, help="sampled codes per source (plus one greedy)")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    cli.add_overrides(p, help="config overrides key.sub=value (with --config)")
    a = cli.parse(p, argv)
    from hqf_jax.trainer import lm_task

    if a.run:
        model, cfg, step = lm_task.load_run(a.run, a.step)
        out = Path(a.out or a.run)
    else:
        cfg = cli.load_config(a.config, a.overrides)
        model, step = lm_task.build_model(cfg), 0
        out = Path(a.out or "runs/kolmogorov_eval")
    out.mkdir(parents=True, exist_ok=True)
    r = evaluate(model, cfg, a.num, a.samples, a.threshold, a.seed)
    r.update(run=a.run or a.config, step=step)
    (out / "kolmogorov_eval.json").write_text(json.dumps(r, indent=2))
    md = table(r)
    (out / "kolmogorov_eval.md").write_text(md + "\n")
    plot(r, out / "kolmogorov_eval.png")
    print(md)
    print(f"wrote {out / 'kolmogorov_eval.json'}, .md and .png")


if __name__ == "__main__":
    cli.run_main(main)
