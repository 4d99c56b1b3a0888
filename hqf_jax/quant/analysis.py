"""The research notes' claims about the phi-grid as measurements on any parameter pytree (studies/quant_analysis.py
describes each test): phi^-k band statistics against Gaussian and uniform-grid nulls, the grid/deviation energy
split, and weight SQNR against honest bits per weight for the codecs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from hqf_jax import quant as Q
from hqf_jax.ops import quant_codecs as qc
from hqf_jax.ops import quant_grids as qg
from hqf_jax.ops import quant_stats as qs
from hqf_jax.pytree import path_str
from hqf_jax.quant.qtensor import check_fits, dequantize_matrix, phi_stages


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
