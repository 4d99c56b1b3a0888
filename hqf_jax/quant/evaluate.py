"""Quality against honest bits per quantization method, on any parameter pytree: one row per method with its
bits per weight (quantized leaves and whole model), compression, loss and its change, weight SQNR and (with a
generator) greedy-continuation agreement. What eval/quant_eval.py and studies/quant_real_weights.py tabulate.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from tqdm import tqdm

from hqf_jax import quant as Q
from hqf_jax.ops import quant_stats as qs
from hqf_jax.quant.qtensor import QTensor


def continuation_agreement(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """(share of rows equal in full, mean share of positions before the first difference)."""
    ref, out = np.asarray(ref), np.asarray(out)
    same = ref == out
    first_diff = np.where(same.all(1), ref.shape[1], np.argmin(same, axis=1))
    return float(same.all(1).mean()), float((first_diff / ref.shape[1]).mean())


def weight_sqnr(params, qtree) -> float:
    sig = err = 0.0
    for p, q in zip(jax.tree_util.tree_leaves(params),
                    jax.tree_util.tree_leaves(qtree, is_leaf=lambda x: isinstance(x, QTensor)), strict=True):
        if isinstance(q, QTensor):
            w = np.asarray(p, np.float64)
            sig += float(np.sum(w**2))
            err += float(np.sum((w - np.asarray(Q.dequantize(q), np.float64)) ** 2))
    return qs.sqnr_db(sig, err) if sig else float("nan")


def evaluate_methods(params, methods: list[str], loss_fn: Callable, generate_fn: Callable | None = None,
                     rule=None, stop: Callable[[], bool] | None = None) -> list[dict]:
    """One row per method (the unquantized params first, as "reference"). Once ``stop()`` is true (e.g. a
    study's time budget is spent) the remaining methods get a row {"spec", "method", "skipped": True}."""
    base_loss = loss_fn(params)
    base_gen = generate_fn(params) if generate_fn else None
    rows = [{"method": "reference (unquantized)", "quantized_bits_per_weight": float("nan"),
             "model_bits_per_weight": float(np.mean([np.asarray(x).dtype.itemsize * 8 for x in jax.tree_util.tree_leaves(params)])),
             "loss": base_loss, "delta_loss": 0.0, "exact": 1.0, "prefix": 1.0, "sqnr_db": float("inf"),
             "ratio_vs_bf16": float("nan"), "kept": []}]
    n_all = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params))
    bits_all = sum(int(np.size(x)) * np.asarray(x).dtype.itemsize * 8 for x in jax.tree_util.tree_leaves(params))
    rows[0]["model_bits_per_weight"] = bits_all / n_all
    for spec in tqdm(methods, desc="methods"):
        cfg = Q.parse_method(spec)
        if stop is not None and stop():
            rows.append({"method": cfg.name, "spec": spec, "skipped": True})
            continue
        qtree = Q.quantize_tree(params, rule, cfg)
        acc = Q.tree_accounting(qtree)
        restored = Q.restore_tree(qtree)
        loss = loss_fn(restored)
        row = {"method": cfg.name, "spec": spec,
               "quantized_bits_per_weight": acc["quantized_bits_per_weight"],
               "model_bits_per_weight": acc["model_bits_per_weight"],
               "ratio_vs_bf16": 16.0 / acc["quantized_bits_per_weight"],
               "loss": loss, "delta_loss": loss - base_loss, "sqnr_db": weight_sqnr(params, qtree),
               "kept": acc["kept"]}
        if generate_fn:
            row["exact"], row["prefix"] = continuation_agreement(base_gen, generate_fn(restored))
        rows.append(row)
    return rows
