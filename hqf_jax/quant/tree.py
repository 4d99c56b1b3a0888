"""Quantize a whole parameter pytree with a rule for which leaves to touch; restore it; account for all of it.

    qtree = quantize_tree(params, rule=None, cfg="int4")    # rule None: every matrix the config fits
    params2 = restore_tree(qtree)                           # same structure, shapes, dtypes
    report = tree_accounting(qtree)                         # every stored bit, kept leaves included

A rule is rule(path: str, leaf) -> bool | QuantConfig | str | None: True quantizes with cfg, a config or spec
quantizes with that one, False/None keeps the leaf as it is (counted at its own dtype's bits).
"""

from __future__ import annotations

from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax.pytree import path_str
from hqf_jax.quant.config import QuantConfig, QuantConfigError, parse_method
from hqf_jax.quant.qtensor import QTensor, check_fits, dequantize, field_bits, quantize

Rule = Callable[[str, Any], Union[bool, QuantConfig, str, None]]


def matrices(min_size: int = 0) -> Rule:
    """Rule: quantize leaves with ndim >= 2 and at least min_size elements."""

    def rule(path: str, leaf) -> bool:
        return hasattr(leaf, "ndim") and leaf.ndim >= 2 and leaf.size >= min_size

    return rule


def _is_q(x) -> bool:
    return isinstance(x, QTensor)


def quantize_tree(params, rule: Rule | None, cfg: QuantConfig | str, *, strict: bool = False):
    """Replace chosen leaves by QTensors. A chosen leaf the config cannot fit (group size not dividing its
    columns) is kept as it is and listed by tree_accounting under 'kept'; with strict=True it raises."""
    cfg = parse_method(cfg)
    rule = rule or matrices()

    def one(path, leaf):
        p = path_str(path)
        choice = rule(p, leaf)
        if choice is None or choice is False:
            return leaf
        c = cfg if choice is True else parse_method(choice)
        try:
            check_fits(tuple(leaf.shape), c, name=p)
        except QuantConfigError:
            if strict:
                raise
            return leaf
        return quantize(leaf, c)

    return jax.tree_util.tree_map_with_path(one, params)


def restore_tree(qtree):
    """Dequantize every QTensor leaf; other leaves pass through."""
    return jax.tree_util.tree_map(lambda x: dequantize(x) if _is_q(x) else x, qtree, is_leaf=_is_q)


def tree_accounting(qtree) -> dict[str, Any]:
    """Bits of every leaf as stored: quantized leaves by their packed fields, kept leaves at their dtype."""
    q_bits = q_numel = k_bits = k_numel = 0
    per_leaf = {}
    kept = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(qtree, is_leaf=_is_q)[0]:
        p = path_str(path)
        if _is_q(leaf):
            b = sum(field_bits(leaf).values())
            q_bits += b
            q_numel += leaf.numel
            per_leaf[p] = {"method": leaf.cfg.name, "numel": leaf.numel, "bits_per_weight": b / leaf.numel}
        else:
            arr = jnp.asarray(leaf)
            b = arr.size * arr.dtype.itemsize * 8
            k_bits += b
            k_numel += arr.size
            kept.append(p)
            per_leaf[p] = {"method": f"kept {arr.dtype}", "numel": int(arr.size), "bits_per_weight": b / max(arr.size, 1)}
    total_numel = q_numel + k_numel
    total = q_bits + k_bits
    return {
        "quantized_numel": q_numel,
        "kept_numel": k_numel,
        "quantized_bits_per_weight": q_bits / q_numel if q_numel else float("nan"),
        "model_bits_per_weight": total / total_numel if total_numel else float("nan"),
        "total_bytes": total // 8,
        "ratio_vs_bf16": 16.0 * total_numel / total if total else float("nan"),
        "ratio_vs_fp32": 32.0 * total_numel / total if total else float("nan"),
        "kept": kept,
        "per_leaf": per_leaf,
    }


def max_abs_change(params, restored) -> float:
    """Largest |a - b| over all leaves of two trees of equal structure."""
    diffs = jax.tree_util.tree_map(
        lambda a, b: float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)))), params, restored
    )
    return float(np.max(jax.tree_util.tree_leaves(diffs) or [0.0]))
