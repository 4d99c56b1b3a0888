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

Generic entry: analyze(params, ...) for any dict-of-arrays pytree.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from hqf_jax import quant as Q
from hqf_jax.ops import quant_codecs as qc
from hqf_jax.ops import quant_grids as qg
from hqf_jax.ops import quant_stats as qs
from hqf_jax.quant.qtensor import check_fits, dequantize_matrix, phi_stages
from hqf_jax.pytree import path_str

RECURSION_SPECS = [
    "phi5", "phi5u4", "phi:depth=2:dev_bits=4", "phi:depth=3:dev_bits=4", "phi5u8", "phi:depth=2:dev_bits=8",
    "phi:depth=2:dev_kind=grid:dev_bits=4", "phi:depth=2:dev_kind=grid:dev_bits=6", "phi:index_bits=6:depth=0",
    "e5u8", "phi:ratio=e_sqrt5:depth=0", "phi:ratio=e_sqrt5:depth=2:dev_bits=4",
    "int:bits=3", "int4", "int:bits=5", "int:bits=6", "int8", "int:bits=9", "int:bits=10", "int:bits=12",
    "int:bits=13", "int:bits=14", "nf4", "nf4dq",
]


def collect_matrices(params, group_size: int | None, min_size: int = 256) -> dict[str, np.ndarray]:
    """The (R, C) matrix views of every leaf with ndim >= 2, >= min_size elements and columns divisible by G."""
    out = {}
    probe = Q.IntConfig(group_size=group_size)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if getattr(leaf, "ndim", 0) < 2 or leaf.size < min_size:
            continue
        try:
            check_fits(tuple(leaf.shape), probe)
        except Q.QuantConfigError:
            continue
        out[path_str(path)] = np.asarray(qc.to_matrix(jnp.asarray(leaf, jnp.float32)))
    return out


def _grid_stage(m: np.ndarray, cfg: Q.PhiGridConfig) -> tuple[np.ndarray, np.ndarray]:
    """(a = |w| / s, stage-0 error) of the phi-grid on one matrix."""
    q = Q.quantize(jnp.asarray(m.T), cfg)  # quantize takes the (K, N) kernel layout; its matrix view is m
    grid = np.asarray(phi_stages(q)[0], np.float64)
    g = cfg.group_size or m.shape[1]
    s = np.repeat(np.asarray(qg.load_scale(q.codes["scale"], cfg.scale_dtype), np.float64), g, axis=1)
    return np.abs(m) / s, m - grid


def band_statistics(mats: dict[str, np.ndarray], ratio="phi", index_bits: int = 5, group_size: int | None = 64,
                    n_null: int = 20, tau: float = 0.075, seed: int = 0) -> dict:
    cfg = Q.PhiGridConfig(ratio=ratio, index_bits=index_bits, depth=0, group_size=group_size)
    r = qg.resolve_ratio(ratio)
    nb = 2 ** (index_bits - 1)
    counts = np.zeros(nb)
    energy = np.zeros(nb)
    uni_energy = np.zeros(nb)
    a_all = []
    for m in mats.values():
        a, err = _grid_stage(m, cfg)
        c, e = qs.band_counts_energy(a, err, r, nb)
        counts += c
        energy += e
        _, eu = qs.band_counts_energy(a, qs.uniform_grid_error(m, group_size, 2**index_bits), r, nb)
        uni_energy += eu
        a_all.append(a.ravel())
    a_all = np.concatenate(a_all)
    rng = np.random.default_rng(seed)
    null_counts, null_energy, null_near = [], [], []
    for _ in tqdm(range(n_null), desc="gaussian null", leave=False):
        nc, ne, na = np.zeros(nb), np.zeros(nb), []
        for m in mats.values():
            std = m.std(axis=1, keepdims=True)
            g = (rng.standard_normal(m.shape) * std).astype(np.float32)
            a, err = _grid_stage(g, cfg)
            c, e = qs.band_counts_energy(a, err, r, nb)
            nc += c
            ne += e
            na.append(a.ravel())
        null_counts.append(nc)
        null_energy.append(ne / ne.sum())
        null_near.append(qs.near_level_fraction(np.concatenate(na), r, tau))
    null_counts = np.array(null_counts)
    null_energy = np.array(null_energy)
    exp_count_share = null_counts.mean(0) / null_counts.mean(0).sum()
    obs_share = energy / energy.sum()
    null_mean = null_energy.mean(0)
    d_obs = qs.share_distance(obs_share, null_mean)
    d_null = np.array([qs.share_distance(null_energy[i], np.delete(null_energy, i, 0).mean(0)) for i in range(n_null)])
    near_obs = qs.near_level_fraction(a_all, r, tau)
    near_null = float(np.mean(null_near))
    n = float((a_all > 0).sum())
    z = (near_obs - near_null) / math.sqrt(max(near_null * (1 - near_null) / n, 1e-300))
    return {
        "config": cfg.name,
        "n_weights": int(counts.sum()),
        "bands": list(range(nb)),
        "count_share": (counts / counts.sum()).tolist(),
        "count_share_gaussian_null": exp_count_share.tolist(),
        "count_test_vs_gaussian": qs.chi_square(counts, exp_count_share),
        "error_share": obs_share.tolist(),
        "error_share_gaussian_null_mean": null_mean.tolist(),
        "error_share_gaussian_null_std": null_energy.std(0).tolist(),
        "error_share_uniform_grid": (uni_energy / uni_energy.sum()).tolist(),
        "error_share_distance_vs_gaussian": d_obs,
        "error_share_p_value": float((1 + np.sum(d_null >= d_obs)) / (n_null + 1)),
        "error_share_distance_vs_uniform_grid": qs.share_distance(obs_share, uni_energy / uni_energy.sum()),
        "near_level": {"tau": tau, "observed": near_obs, "gaussian_null": near_null,
                       "log_uniform_expectation": 2 * tau, "z": z},
    }


def energy_split(mats: dict[str, np.ndarray], specs=("phi5u8", "phi:depth=2:dev_bits=4",
                                                    "phi:depth=2:dev_kind=grid:dev_bits=4")) -> list[dict]:
    rows = []
    for spec in specs:
        cfg = Q.parse_method(spec)
        tot = {"w": 0.0, "err": 0.0}
        stage_e = None
        for m in mats.values():
            q = Q.quantize(jnp.asarray(m.T), cfg)
            st = [np.asarray(s, np.float64) for s in phi_stages(q)]
            stage_e = np.zeros(len(st)) if stage_e is None else stage_e
            stage_e += np.array([np.sum(s**2) for s in st])
            tot["w"] += float(np.sum(m.astype(np.float64) ** 2))
            tot["err"] += float(np.sum((m - np.asarray(dequantize_matrix(q), np.float64)) ** 2))
        rows.append({"config": cfg.name, "stage_energy_share": (stage_e / tot["w"]).tolist(),
                     "error_energy_share": tot["err"] / tot["w"]})
    return rows


def recursion_table(mats: dict[str, np.ndarray], specs=RECURSION_SPECS) -> list[dict]:
    rows = []
    for spec in tqdm(specs, desc="codecs", leave=False):
        cfg = Q.parse_method(spec)
        bits = sig = err = 0.0
        n = 0
        for m in mats.values():
            q = Q.quantize(jnp.asarray(m.T), cfg)
            d = np.asarray(dequantize_matrix(q), np.float64)
            bits += Q.bits_per_weight(q) * m.size
            n += m.size
            sig += float(np.sum(m.astype(np.float64) ** 2))
            err += float(np.sum((m - d) ** 2))
        rows.append({"config": cfg.name, "spec": spec, "bits_per_weight": bits / n, "sqnr_db": qs.sqnr_db(sig, err),
                     "rel_mse": err / sig})
    return rows


def analyze(params, *, ratio="phi", index_bits: int = 5, group_size: int | None = 64, n_null: int = 20,
            seed: int = 0) -> dict:
    mats = collect_matrices(params, group_size)
    if not mats:
        raise Q.QuantConfigError(f"no weight matrix with columns divisible by group_size={group_size}; pass another")
    return {
        "matrices": {k: list(v.shape) for k, v in mats.items()},
        "bands": band_statistics(mats, ratio, index_bits, group_size, n_null, seed=seed),
        "energy_split": energy_split(mats),
        "recursion": recursion_table(mats),
    }


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
