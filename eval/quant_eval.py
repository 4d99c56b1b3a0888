"""Quality against honest bits, per quantization method, side by side: for a byte-LM run folder (or any
parameter pytree with a loss and a generator), a table of bits/weight, compression vs bf16, validation bpb and
its change, weight SQNR and the exact-match rate of greedy continuations against the unquantized model.

    python -m eval.quant_eval --run runs/lm_tiny --out runs/quant_eval
    python -m eval.quant_eval --run runs/lm_tiny --methods bf16,int4,nf4,phi5u8 --prompts 16 --steps 64

Every method quantizes the same leaves (rule: matrices whose columns its group size divides; others stay fp32
and are counted at 32 bits in "model bits/w"). "exact" is the share of prompts whose whole greedy continuation
equals the unquantized model's; "prefix" the mean share of bytes before the first divergence.
Writes results.json and quality_vs_bits.png into --out.

Generic entry: hqf_jax.quant.evaluate.evaluate_methods(params, methods, loss_fn, generate_fn).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from hqf_jax.quant.evaluate import continuation_agreement, evaluate_methods, weight_sqnr  # noqa: F401

DEFAULT_METHODS = "fp32,bf16,int8,phi5u8,e5u8,phi5u4,int:bits=5,phi5,int4,int4z,nf4,nf4dq,int:bits=3"


def print_table(rows: list[dict], loss_name: str = "bpb") -> None:
    print(f"\n{'method':<24} {'q bits/w':>8} {'model b/w':>9} {'x vs bf16':>9} {loss_name:>8} {'delta':>8} "
          f"{'SQNR dB':>8} {'exact':>6} {'prefix':>6}")
    for r in rows:
        print(f"{r['method']:<24} {r['quantized_bits_per_weight']:8.3f} {r['model_bits_per_weight']:9.3f} "
              f"{r['ratio_vs_bf16']:9.2f} {r['loss']:8.4f} {r['delta_loss']:+8.4f} {r['sqnr_db']:8.2f} "
              f"{r.get('exact', float('nan')):6.2f} {r.get('prefix', float('nan')):6.2f}")
    kept = sorted({k for r in rows[1:] for k in r["kept"]})
    if kept:
        print(f"kept unquantized by at least one method (group size does not divide, or not a matrix): {kept}")


def plot(rows: list[dict], path: str, loss_name: str = "bpb") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    base = rows[0]["loss"]
    for r in rows[1:]:
        fam = "phi-grid" if r["method"].startswith(("phi", "e")) else r["method"].split("/")[0].rstrip("0123456789z")
        marker = {"phi-grid": "o", "int": "^", "nf": "D", "bf": "s", "fp": "s"}.get(fam, "x")
        for a, y in ((ax[0], max(r["delta_loss"], 1e-5)), (ax[1], r.get("exact", np.nan))):
            a.scatter(r["quantized_bits_per_weight"], y, marker=marker)
            a.annotate(r["method"].split("/")[0], (r["quantized_bits_per_weight"], y), fontsize=7)
    ax[0].set(xlabel="bits per quantized weight (honest)", ylabel=f"{loss_name} - {base:.4f} (unquantized), floor 1e-5",
              yscale="log", title="quality vs bits")
    ax[1].set(xlabel="bits per quantized weight (honest)", ylabel="exact greedy continuations",
              title="greedy agreement with the unquantized model", ylim=(-0.05, 1.05))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a train.lm run folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", default=DEFAULT_METHODS, help="comma list of presets/specs (hqf_jax.quant.PRESETS)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=48)
    ap.add_argument("--steps", type=int, default=48, help="greedy bytes per prompt")
    ap.add_argument("--max-bytes", type=int, default=1 << 15, help="held-out bytes scored for bpb")
    a = ap.parse_args(argv)
    from hqf_jax.data.catalog import load_corpus
    from hqf_jax.quant import lm_adapter

    model, cfg, step = lm_adapter.load_run_model(a.run)
    stream = load_corpus(cfg.data).stream("valid")
    loss_fn = lm_adapter.make_bpb_fn(model, stream, min(cfg.data.seq_len, len(stream)), 16, a.max_bytes)
    prompts = lm_adapter.prompts_from(stream, a.prompts, a.prompt_len)
    gen_fn = lm_adapter.make_greedy_fn(model, prompts, a.steps)
    rows = evaluate_methods(lm_adapter.params_of(model), a.methods.split(","), loss_fn, gen_fn)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"run": a.run, "step": step, "rows": rows}, f, indent=1, default=float)
    plot(rows, os.path.join(a.out, "quality_vs_bits.png"))
    print(f"run {a.run} step {step}; {len(prompts)} prompts x {a.steps} greedy bytes; bpb on {a.max_bytes:,} held-out bytes")
    print_table(rows)
    print(f"\nwrote {a.out}/results.json and quality_vs_bits.png")


if __name__ == "__main__":
    main()
