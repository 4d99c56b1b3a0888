"""Statistics for testing the research notes' claims about the phi-grid: phi-band membership, error energy per
band, uniform-grid errors, the chi-square test, the near-level fraction. Pure functions on arrays (numpy: these
run once per analysis on host-sized data, with scipy for the chi-square tail)."""

from __future__ import annotations

import math

import numpy as np


def phi_bands(a: np.ndarray, ratio: float, n_bands: int) -> np.ndarray:
    """Band k of normalised magnitudes a = |w| / s in [0, 1]: a in (r**-(k+1), r**-k]; the last band also takes
    everything smaller (and a = 0)."""
    a = np.asarray(a, np.float64)
    with np.errstate(divide="ignore"):
        k = np.floor(-np.log(np.maximum(a, 1e-300)) / math.log(ratio))
    return np.clip(k, 0, n_bands - 1).astype(np.int64)


def band_counts_energy(a: np.ndarray, err: np.ndarray, ratio: float, n_bands: int) -> tuple[np.ndarray, np.ndarray]:
    """(count per band, sum of squared error per band)."""
    k = phi_bands(a, ratio, n_bands).ravel()
    e2 = np.asarray(err, np.float64).ravel() ** 2
    return np.bincount(k, minlength=n_bands).astype(np.float64), np.bincount(k, weights=e2, minlength=n_bands)


def uniform_grid_error(m: np.ndarray, group_size: int | None, levels: int) -> np.ndarray:
    """Error of rounding m (R, C) to `levels` equally spaced points spanning [-s, s] per group (s = absmax):
    the uniform grid with as many levels as the phi-grid."""
    r, c = m.shape
    g = group_size or c
    x = np.asarray(m, np.float64).reshape(r, c // g, g)
    s = np.max(np.abs(x), axis=-1, keepdims=True)
    s = np.where(s > 0, s, 1.0)
    step = 2.0 / (levels - 1)
    u = (x / s + 1.0) / step
    q = np.clip(np.round(u), 0, levels - 1) * step - 1.0
    return (x - q * s).reshape(r, c)


def merge_small_bins(obs: np.ndarray, exp: np.ndarray, min_expected: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Merge adjacent bins (from the tail) until every expected count is >= min_expected."""
    o, e = list(map(float, obs)), list(map(float, exp))
    i = len(e) - 1
    while i > 0:
        if e[i] < min_expected:
            e[i - 1] += e.pop(i)
            o[i - 1] += o.pop(i)
        i -= 1
    if len(e) > 1 and e[0] < min_expected:
        first_e, first_o = e.pop(0), o.pop(0)
        e[0] += first_e
        o[0] += first_o
    return np.array(o), np.array(e)


def chi_square(obs: np.ndarray, exp_share: np.ndarray, min_expected: float = 5.0) -> dict:
    """Pearson chi-square of observed counts against expected shares (rescaled to the observed total)."""
    from scipy.stats import chi2

    obs = np.asarray(obs, np.float64)
    exp = np.asarray(exp_share, np.float64)
    exp = exp / exp.sum() * obs.sum()
    o, e = merge_small_bins(obs, exp, min_expected)
    stat = float(np.sum((o - e) ** 2 / e))
    df = len(e) - 1
    return {"chi2": stat, "df": df, "p_value": float(chi2.sf(stat, df)) if df > 0 else float("nan"),
            "total_variation": float(0.5 * np.sum(np.abs(o / o.sum() - e / e.sum())))}


def share_distance(share: np.ndarray, ref_share: np.ndarray) -> float:
    """Chi-square-like distance sum (p - q)^2 / q between two share vectors (bins with q = 0 skipped)."""
    p, q = np.asarray(share, np.float64), np.asarray(ref_share, np.float64)
    keep = q > 0
    return float(np.sum((p[keep] - q[keep]) ** 2 / q[keep]))


def near_level_fraction(a: np.ndarray, ratio: float, tau: float) -> float:
    """Share of nonzero a whose log_r(a) lies within tau of an integer, i.e. within a factor r**tau of a level
    r**-k. Log-uniform magnitudes give 2 * tau."""
    a = np.asarray(a, np.float64).ravel()
    a = a[a > 0]
    x = -np.log(a) / math.log(ratio)
    return float(np.mean(np.abs(x - np.round(x)) < tau))


def sqnr_db(signal_energy: float, error_energy: float) -> float:
    if error_energy <= 0:
        return float("inf")
    return float(10.0 * np.log10(signal_energy / error_energy))
