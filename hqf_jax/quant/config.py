"""Quantization method configs (frozen, hashable) and the spec strings that name them.

    parse_method("int4")                         preset
    parse_method("phi:index_bits=6:dev_bits=4")  method with field overrides
    parse_method("nf4dq:group_size=128")         preset with overrides
"""

from __future__ import annotations

import dataclasses
from typing import Union

from hqf_jax.ops import quant_grids as qg


class QuantConfigError(ValueError):
    """A bad quantization config or spec; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class PhiGridConfig:
    ratio: Union[str, float] = "phi"  # "phi", "e_sqrt5" or a number > 1
    index_bits: int = 5  # sign + (index_bits - 1) bits of k: 2**index_bits levels
    dev_bits: int = 8  # bits of each deviation stage
    depth: int = 1  # number of deviation stages (0 = grid only)
    dev_kind: str = "uniform"  # "uniform" signed code, or "grid" (the same geometric grid, recursively)
    group_size: Union[int, None] = 64  # columns per scale group; None = one group per row
    sort: bool = False  # sort each row first and store the permutation (ceil(log2 C) bits per weight)
    scale_dtype: str = "bf16"  # "bf16" or "fp32"
    method = "phi"

    def validate(self) -> None:
        _check_group(self.group_size)
        if not (isinstance(self.ratio, str) and self.ratio in qg.GRID_RATIOS) and not (
            isinstance(self.ratio, (int, float)) and self.ratio > 1
        ):
            raise QuantConfigError(f"phi.ratio={self.ratio!r}: use one of {sorted(qg.GRID_RATIOS)} or a number > 1")
        if not 2 <= self.index_bits <= 8:
            raise QuantConfigError(f"phi.index_bits={self.index_bits}: use 2..8")
        if self.dev_kind not in ("uniform", "grid"):
            raise QuantConfigError(f"phi.dev_kind={self.dev_kind!r}: use 'uniform' or 'grid'")
        if self.depth < 0 or (self.depth > 0 and not 2 <= self.dev_bits <= 16):
            raise QuantConfigError(f"phi.depth={self.depth}, dev_bits={self.dev_bits}: depth >= 0 and dev_bits in 2..16")
        _check_scale(self.scale_dtype)

    @property
    def name(self) -> str:
        r = {"phi": "phi", "e_sqrt5": "e"}.get(self.ratio, f"r{self.ratio}")
        n = f"{r}{self.index_bits}"
        if self.depth:
            n += ("+" + ("u" if self.dev_kind == "uniform" else "p") + str(self.dev_bits)) * self.depth
        n += f"/g{self.group_size or 'row'}"
        return n + ("/sort" if self.sort else "")


@dataclasses.dataclass(frozen=True)
class IntConfig:
    bits: int = 4
    group_size: Union[int, None] = 64
    symmetric: bool = True  # False: asymmetric with a bits-wide zero point per group
    scale_dtype: str = "bf16"
    method = "int"

    def validate(self) -> None:
        _check_group(self.group_size)
        if not 2 <= self.bits <= 16:
            raise QuantConfigError(f"int.bits={self.bits}: use 2..16")
        _check_scale(self.scale_dtype)

    @property
    def name(self) -> str:
        return f"int{self.bits}{'' if self.symmetric else 'z'}/g{self.group_size or 'row'}"


@dataclasses.dataclass(frozen=True)
class NF4Config:
    group_size: Union[int, None] = 64
    double_quant: bool = False
    dq_block: int = 256
    method = "nf4"

    def validate(self) -> None:
        _check_group(self.group_size)
        if self.dq_block < 1:
            raise QuantConfigError(f"nf4.dq_block={self.dq_block}: use a positive block size (QLoRA: 256)")

    @property
    def name(self) -> str:
        return f"nf4{'-dq' if self.double_quant else ''}/g{self.group_size or 'row'}"


@dataclasses.dataclass(frozen=True)
class FloatConfig:
    dtype: str = "bf16"  # "bf16" or "fp32"
    method = "float"

    def validate(self) -> None:
        if self.dtype not in ("bf16", "fp32"):
            raise QuantConfigError(f"float.dtype={self.dtype!r}: use 'bf16' or 'fp32'")

    @property
    def name(self) -> str:
        return self.dtype


QuantConfig = Union[PhiGridConfig, IntConfig, NF4Config, FloatConfig]
METHODS = {"phi": PhiGridConfig, "int": IntConfig, "nf4": NF4Config, "float": FloatConfig}

PRESETS: dict[str, QuantConfig] = {
    "fp32": FloatConfig("fp32"),
    "bf16": FloatConfig("bf16"),
    "int8": IntConfig(bits=8),
    "int4": IntConfig(bits=4),
    "int4z": IntConfig(bits=4, symmetric=False),
    "nf4": NF4Config(),
    "nf4dq": NF4Config(double_quant=True),
    "phi4": PhiGridConfig(index_bits=4, depth=0),  # 4 bits a weight: the φ-grid the Hopper kernel takes
    "phi5": PhiGridConfig(index_bits=5, depth=0),
    "phi5u8": PhiGridConfig(index_bits=5, dev_bits=8),
    "phi6u8": PhiGridConfig(index_bits=6, dev_bits=8),
    "phi5u4": PhiGridConfig(index_bits=5, dev_bits=4),
    "e5u8": PhiGridConfig(ratio="e_sqrt5", index_bits=5, dev_bits=8),
}


def _check_group(g) -> None:
    if g is not None and (not isinstance(g, int) or g < 1):
        raise QuantConfigError(f"group_size={g!r}: use a positive int dividing the columns, or None for per-row")


def _check_scale(s) -> None:
    if s not in qg.SCALE_BITS:
        raise QuantConfigError(f"scale_dtype={s!r}: use one of {sorted(qg.SCALE_BITS)}")


def _coerce(field: dataclasses.Field, text: str):
    if text in ("None", "none", "row"):
        return None
    if field.name == "ratio":
        try:
            return float(text)
        except ValueError:
            return text
    if field.type in ("bool",) or isinstance(field.default, bool):
        if text not in ("true", "false", "1", "0", "True", "False"):
            raise QuantConfigError(f"{field.name}={text!r}: use true or false")
        return text in ("true", "1", "True")
    if isinstance(field.default, int) or field.name == "group_size":
        return int(text)
    return text


def parse_method(spec: Union[str, QuantConfig]) -> QuantConfig:
    """Config from a preset name, a method name, or either followed by :key=value overrides."""
    if not isinstance(spec, str):
        spec.validate()
        return spec
    head, *opts = spec.split(":")
    if head in PRESETS:
        cfg = PRESETS[head]
    elif head in METHODS:
        cfg = METHODS[head]()
    else:
        raise QuantConfigError(
            f"unknown quantization method {head!r}: use a preset {sorted(PRESETS)} or a method {sorted(METHODS)}"
        )
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    updates = {}
    for o in opts:
        if "=" not in o or o.split("=", 1)[0] not in fields:
            raise QuantConfigError(f"bad option {o!r} in {spec!r}: write key=value with key in {sorted(fields)}")
        k, v = o.split("=", 1)
        updates[k] = _coerce(fields[k], v)
    cfg = dataclasses.replace(cfg, **updates)
    cfg.validate()
    return cfg


def config_to_dict(cfg: QuantConfig) -> dict:
    return {"method": cfg.method, **dataclasses.asdict(cfg)}


def config_from_dict(d: dict) -> QuantConfig:
    d = dict(d)
    cls = METHODS[d.pop("method")]
    return cls(**d)


def ideal_bits_hint(cfg: QuantConfig) -> float:
    """Payload bits per weight ignoring scales (for labels only; accounting uses the real packed sizes)."""
    if isinstance(cfg, PhiGridConfig):
        return cfg.index_bits + cfg.depth * cfg.dev_bits
    if isinstance(cfg, IntConfig):
        return cfg.bits
    if isinstance(cfg, NF4Config):
        return 4
    return 32 if cfg.dtype == "fp32" else 16

