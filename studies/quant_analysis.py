"""The research notes' claims about the phi-grid, as measurements on any parameter pytree.

    python -m studies.quant_analysis --run runs/lm_tiny --out runs/quant_analysis      # a trained byte LM
    python -m studies.quant_analysis --random configs/lm_tiny.py --out runs/qa_random   # negative control

Claims tested (weights in the (R, C) matrix view, groups of G columns, s = group absmax):
  1. "quantization error clusters at phi^-k levels (60% observed vs 15% expected)". Two readings, both measured:
     a) phi-bands: each weight falls in band k when |w|/s is in (phi^-(k+1), phi^-k]. For the phi-grid (grid
        stage only) we compare, per band, the share of weights and of squared error against two nulls:
        (a) Gaussian weights with the same per-row variance quantized the same way (Monte-Carlo draws), and
        (b) the same weights on a uniform grid with as many levels. Counts: Pearson chi-square vs null (a).
        Error shares: chi-square-like distance D, p-value from its Monte-Carlo null distribution.
     b) near-level: the share of weights within a factor phi^tau of some phi^-k, against null (a) (binomial z).
  2. energy split of grid vs deviation for phi5+u8 and deeper codecs (shares of sum w^2).
  3. recursion: weight SQNR (dB) against honest bits per weight for phi-grid depths, the e/sqrt5 grid, int-b
     RTN and NF4; dB gained per extra bit (a uniform quantizer gains 6.02 dB per bit).
Writes report.json, bands.png, sqnr_vs_bits.png into --out and prints the tables.

Generic entry: hqf_jax.quant.analysis.analyze(params, ...) for any dict-of-arrays pytree.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from hqf_jax.quant.analysis import (  # noqa: F401  (the tests and notebooks reach them here too)
    RECURSION_SPECS, analyze, band_statistics, collect_matrices, energy_split, recursion_table,
)

def plots(report: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = report["bands"]
    k = np.array(b["bands"])
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    ax[0].bar(k - 0.2, b["count_share"], 0.4, label="observed")
    ax[0].bar(k + 0.2, b["count_share_gaussian_null"], 0.4, label="Gaussian null")
    ax[0].set(title="share of weights per phi-band", xlabel="band k: |w|/s in (phi^-(k+1), phi^-k]", yscale="log")
    ax[0].legend()
    m, sd = np.array(b["error_share_gaussian_null_mean"]), np.array(b["error_share_gaussian_null_std"])
    ax[1].bar(k - 0.27, b["error_share"], 0.27, label="observed (phi-grid)")
    ax[1].bar(k, m, 0.27, yerr=2 * sd, label="Gaussian null (+-2 sd)")
    ax[1].bar(k + 0.27, b["error_share_uniform_grid"], 0.27, label="uniform grid, same levels")
    ax[1].set(title=f"share of squared error per band (p={b['error_share_p_value']:.3g})", xlabel="band k",
              yscale="log")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bands.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for fam, marker in (("phi", "o"), ("e", "s"), ("int", "^"), ("nf4", "D")):
        rows = [r for r in report["recursion"] if r["config"].startswith(fam)]
        ax.scatter([r["bits_per_weight"] for r in rows], [r["sqnr_db"] for r in rows], marker=marker, label=fam)
        for r in rows:
            ax.annotate(r["config"].split("/")[0], (r["bits_per_weight"], r["sqnr_db"]), fontsize=6)
    xs = np.linspace(2, 16, 10)
    ax.set(xlabel="bits per weight (honest, scales included)", ylabel="weight SQNR (dB)",
           title="quality vs bits (weights)")
    ax.plot(xs, 6.02 * xs - 6.02 * xs[0] + min(r["sqnr_db"] for r in report["recursion"]), ":", c="gray",
            label="6.02 dB/bit slope")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "sqnr_vs_bits.png"), dpi=120)
    plt.close(fig)


def print_report(r: dict) -> None:
    b = r["bands"]
    print(f"\nphi-band statistics ({b['config']}, {b['n_weights']:,} weights in {len(r['matrices'])} matrices)")
    print(f"{'band':>4} {'w share':>9} {'null':>9} {'err share':>10} {'null mean':>10} {'null sd':>9} {'uniform':>9}")
    for k in b["bands"]:
        print(f"{k:>4} {b['count_share'][k]:9.4f} {b['count_share_gaussian_null'][k]:9.4f} {b['error_share'][k]:10.4f} "
              f"{b['error_share_gaussian_null_mean'][k]:10.4f} {b['error_share_gaussian_null_std'][k]:9.4f} "
              f"{b['error_share_uniform_grid'][k]:9.4f}")
    t = b["count_test_vs_gaussian"]
    print(f"counts vs Gaussian null: chi2={t['chi2']:.1f} df={t['df']} p={t['p_value']:.3g} TV={t['total_variation']:.4f}")
    print(f"error shares vs Gaussian null: D={b['error_share_distance_vs_gaussian']:.4g} "
          f"Monte-Carlo p={b['error_share_p_value']:.3g}; vs uniform grid D={b['error_share_distance_vs_uniform_grid']:.4g}")
    nl = b["near_level"]
    print(f"near a level (within phi^{nl['tau']}): observed {nl['observed']:.4f}, Gaussian null {nl['gaussian_null']:.4f}, "
          f"log-uniform {nl['log_uniform_expectation']:.3f}, z={nl['z']:.2f}")
    print("\nenergy split (shares of sum w^2): stages = grid, dev1, ...")
    for e in r["energy_split"]:
        print(f"  {e['config']:<22} stages {[round(x, 6) for x in e['stage_energy_share']]} error {e['error_energy_share']:.3g}")
    print(f"\n{'codec':<24} {'bits/w':>7} {'SQNR dB':>8}")
    for row in sorted(r["recursion"], key=lambda x: x["bits_per_weight"]):
        print(f"{row['config']:<24} {row['bits_per_weight']:7.3f} {row['sqnr_db']:8.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a train.lm run folder (its newest checkpoint)")
    src.add_argument("--random", metavar="CONFIG", help="a randomly initialised model of this config file")
    ap.add_argument("--out", required=True, help="folder for report.json and the PNGs")
    ap.add_argument("--ratio", default="phi")
    ap.add_argument("--index-bits", type=int, default=5)
    ap.add_argument("--group-size", default="64", help="an int or 'row'")
    ap.add_argument("--n-null", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from hqf_jax.quant import lm_adapter

    if a.run:
        model, _, step = lm_adapter.load_run_model(a.run)
        source = f"{a.run} step {step}"
    else:
        model, _ = lm_adapter.random_model(a.random, a.seed)
        source = f"random init of {a.random}"
    g = None if a.group_size == "row" else int(a.group_size)
    report = analyze(lm_adapter.params_of(model), ratio=a.ratio, index_bits=a.index_bits, group_size=g,
                     n_null=a.n_null, seed=a.seed)
    report["source"] = source
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    plots(report, a.out)
    print(f"source: {source}")
    print_report(report)
    print(f"\nwrote {a.out}/report.json, bands.png, sqnr_vs_bits.png")


if __name__ == "__main__":
    main()
