"""One API over every codec: quantize(w, cfg) -> QTensor, dequantize(q) -> w, honest accounting, packing.

A QTensor holds the integer codes of one weight (unpacked, uint32, in the (R, C) matrix view of
hqf_jax.ops.quant_codecs) and, as static metadata, the config, the original shape/dtype and the stored bits per
element of every field. Accounting counts the bits of the PACKED fields (hqf_jax.ops.quant_pack), padding of
the last word included, so it equals the bytes written to disk.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax.ops import quant_codecs as qc
from hqf_jax.ops import quant_grids as qg
from hqf_jax.ops import quant_pack as qp
from hqf_jax.quant.config import (
    FloatConfig,
    IntConfig,
    NF4Config,
    PhiGridConfig,
    QuantConfig,
    QuantConfigError,
    config_from_dict,
    config_to_dict,
    parse_method,
)


@dataclasses.dataclass(frozen=True)
class QTensor:
    codes: dict[str, jax.Array]
    bits: tuple[tuple[str, int], ...]
    cfg: QuantConfig
    shape: tuple[int, ...]
    dtype: str

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return qc.matrix_shape(self.shape)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


jax.tree_util.register_dataclass(QTensor, data_fields=["codes"], meta_fields=["bits", "cfg", "shape", "dtype"])


def _phi_kw(cfg: PhiGridConfig) -> dict[str, Any]:
    return dict(
        ratio=qg.resolve_ratio(cfg.ratio), index_bits=cfg.index_bits, dev_bits=cfg.dev_bits, depth=cfg.depth,
        dev_kind=cfg.dev_kind, group_size=cfg.group_size, scale_dtype=cfg.scale_dtype,
    )


def check_fits(shape: tuple[int, ...], cfg: QuantConfig, name: str = "weight") -> None:
    """Raise QuantConfigError (naming the fix) when cfg cannot quantize a weight of this shape."""
    g = getattr(cfg, "group_size", None)
    _, c = qc.matrix_shape(tuple(shape))
    if g is not None and c % g:
        raise QuantConfigError(
            f"group_size={g} does not divide the {c} columns of {name} {tuple(shape)}: "
            f"use a divisor of {c} or group_size=None (per row)"
        )


def _encode(m: jax.Array, cfg: QuantConfig) -> tuple[dict[str, jax.Array], dict[str, int]]:
    if isinstance(cfg, PhiGridConfig):
        return qc.phi_encode(m, sort=cfg.sort, **_phi_kw(cfg))
    if isinstance(cfg, IntConfig):
        return qc.int_encode(
            m, bits=cfg.bits, group_size=cfg.group_size, symmetric=cfg.symmetric, scale_dtype=cfg.scale_dtype
        )
    if isinstance(cfg, NF4Config):
        return qc.nf4_encode(m, group_size=cfg.group_size, double_quant=cfg.double_quant, dq_block=cfg.dq_block)
    return qc.float_encode(m, dtype=cfg.dtype)


def _decode(codes: dict[str, jax.Array], cfg: QuantConfig) -> jax.Array:
    if isinstance(cfg, PhiGridConfig):
        return qc.phi_decode(codes, **_phi_kw(cfg))
    if isinstance(cfg, IntConfig):
        return qc.int_decode(
            codes, bits=cfg.bits, group_size=cfg.group_size, symmetric=cfg.symmetric, scale_dtype=cfg.scale_dtype
        )
    if isinstance(cfg, NF4Config):
        return qc.nf4_decode(codes, group_size=cfg.group_size, double_quant=cfg.double_quant, dq_block=cfg.dq_block)
    return qc.float_decode(codes, dtype=cfg.dtype)


_encode_codes = jax.jit(lambda m, cfg: _encode(m, cfg)[0], static_argnums=1)
_decode_jit = jax.jit(_decode, static_argnums=1)


def field_bits_per_element(cfg: QuantConfig, cols: int) -> dict[str, int]:
    """Stored bits per element of every field a config writes for a matrix of `cols` columns."""
    if isinstance(cfg, PhiGridConfig):
        sb = qg.SCALE_BITS[cfg.scale_dtype]
        out = {"idx": cfg.index_bits, "scale": sb}
        for j in range(1, cfg.depth + 1):
            out[f"dev{j}"], out[f"dev{j}_scale"] = cfg.dev_bits, sb
        if cfg.sort:
            out["perm"] = qc.perm_bits(cols)
        return out
    if isinstance(cfg, IntConfig):
        out = {"q": cfg.bits, "scale": qg.SCALE_BITS[cfg.scale_dtype]}
        if not cfg.symmetric:
            out["zero"] = cfg.bits
        return out
    if isinstance(cfg, NF4Config):
        return {"q": 4, **({"absmax_q": 8, "absmax2": 32, "offset": 32} if cfg.double_quant else {"absmax": 32})}
    return {"w": 32 if cfg.dtype == "fp32" else 16}


def quantize(w: jax.Array, cfg: QuantConfig | str) -> QTensor:
    """Quantize one weight (any shape; see quant_codecs.to_matrix for the matrix view) with one config."""
    cfg = parse_method(cfg)
    w = jnp.asarray(w)
    check_fits(w.shape, cfg)
    m = qc.to_matrix(w.astype(jnp.float32))
    codes = _encode_codes(m, cfg)
    bits = field_bits_per_element(cfg, m.shape[1])
    return QTensor(codes=codes, bits=tuple(sorted(bits.items())), cfg=cfg, shape=tuple(w.shape), dtype=str(w.dtype))


def dequantize_matrix(q: QTensor) -> jax.Array:
    """Float32 reconstruction in the (R, C) matrix view (original column order)."""
    return _decode_jit(q.codes, q.cfg)


def dequantize(q: QTensor) -> jax.Array:
    """The weight in its original shape and dtype."""
    return qc.from_matrix(dequantize_matrix(q), q.shape).astype(q.dtype)


def phi_stages(q: QTensor) -> list[jax.Array]:
    """Per-stage contributions of a phi-grid QTensor (grid, dev1, ...), matrix view, SORTED order if sorted."""
    if not isinstance(q.cfg, PhiGridConfig):
        raise QuantConfigError(f"phi_stages needs a phi-grid QTensor, got {q.cfg.name}")
    return qc.phi_decode_stages(q.codes, **_phi_kw(q.cfg))


def error_bound(q: QTensor, w: jax.Array) -> jax.Array:
    """Per-element bound on |w - dequantize(q)| implied by the codec, in the (R, C) matrix view (original column
    order). `w` is the original weight (NF4 with double quantization needs its true absmax)."""
    return _bound_jit(q.codes, qc.to_matrix(jnp.asarray(w, jnp.float32)), q.cfg)


def _bound(codes: dict[str, jax.Array], m: jax.Array, cfg: QuantConfig) -> jax.Array:
    r, c = m.shape
    g = getattr(cfg, "group_size", None) or c

    def per_group(b):
        return jnp.repeat(b, g, axis=1)

    if isinstance(cfg, PhiGridConfig):
        s = qg.load_scale(codes["scale"], cfg.scale_dtype)
        last = qg.load_scale(codes[f"dev{cfg.depth}_scale"], cfg.scale_dtype) if cfg.depth else s
        kw = {k: v for k, v in _phi_kw(cfg).items() if k not in ("group_size", "scale_dtype")}
        b = per_group(qc.phi_error_bound(s, last, **kw))
        return qc.unsort(b, codes["perm"]) if cfg.sort else b
    if isinstance(cfg, IntConfig):
        return per_group(qg.load_scale(codes["scale"], cfg.scale_dtype) / 2.0)
    if isinstance(cfg, NF4Config):
        used = qc.nf4_scales(codes, (r, c // g), double_quant=cfg.double_quant, dq_block=cfg.dq_block)
        absmax = jnp.max(jnp.abs(m.reshape(r, c // g, g)), axis=-1)
        return per_group(used * qg.table_max_abs_error(qg.NF4_LEVELS) + jnp.maximum(absmax - used, 0.0))
    return jnp.abs(m) * (2.0**-8 if cfg.dtype == "bf16" else 0.0)  # unit roundoff of bf16


_bound_jit = jax.jit(_bound, static_argnums=2)


# ---- accounting ----------------------------------------------------------------------------------------------


def field_bits(q: QTensor) -> dict[str, int]:
    """Stored (packed) bits of every field, padding included."""
    return {name: qp.packed_bits(int(np.prod(q.codes[name].shape)), b) for name, b in q.bits}


def accounting(q: QTensor) -> dict[str, Any]:
    fb = field_bits(q)
    total = sum(fb.values())
    bpw = total / q.numel
    return {
        "method": q.cfg.name,
        "numel": q.numel,
        "total_bits": total,
        "bytes": total // 8,
        "bits_per_weight": bpw,
        "per_field_bpw": {k: v / q.numel for k, v in fb.items()},
        "ratio_vs_bf16": 16.0 / bpw,
        "ratio_vs_fp32": 32.0 / bpw,
    }


def bits_per_weight(q: QTensor) -> float:
    return sum(field_bits(q).values()) / q.numel


# ---- packing -------------------------------------------------------------------------------------------------


def pack(q: QTensor) -> dict[str, np.ndarray]:
    """Packed uint32 words: key '<field>.w<width>' per power-of-two part."""
    out = {}
    for name, b in q.bits:
        parts = qp.pack_field(q.codes[name], b)
        for (w, _), words in zip(qp.split_widths(b), parts, strict=True):
            out[f"{name}.w{w}"] = np.asarray(words, dtype=np.uint32)
    return out


def manifest_entry(q: QTensor) -> dict[str, Any]:
    return {
        "kind": "quantized",
        "config": config_to_dict(q.cfg),
        "shape": list(q.shape),
        "dtype": q.dtype,
        "fields": {name: {"bits": b, "shape": list(q.codes[name].shape)} for name, b in q.bits},
    }


def unpack(packed: dict[str, np.ndarray], entry: dict[str, Any]) -> QTensor:
    codes = {}
    bits = []
    for name, f in entry["fields"].items():
        parts = [jnp.asarray(packed[f"{name}.w{w}"]) for w, _ in qp.split_widths(f["bits"])]
        codes[name] = qp.unpack_field(parts, f["bits"], tuple(f["shape"]))
        bits.append((name, f["bits"]))
    return QTensor(codes=codes, bits=tuple(sorted(bits)), cfg=config_from_dict(entry["config"]),
                   shape=tuple(entry["shape"]), dtype=entry["dtype"])


__all__ = [
    "QTensor", "quantize", "dequantize", "dequantize_matrix", "phi_stages", "error_bound", "accounting",
    "bits_per_weight", "field_bits", "pack", "unpack", "manifest_entry", "check_fits", "FloatConfig",
]
