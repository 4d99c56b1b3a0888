"""Shared pieces of the quantized matmul kernels: the kernel-side layout of a packed QTensor and the in-kernel
field readers and value decoders (traced Python, used inside Pallas kernel bodies).

Layout (PackedWeight), from the same packed words that are written to disk (hqf_jax.ops.quant_pack):
  * per-weight fields (R, C) (indices, deviations, int/NF4 codes, the sort permutation): each power-of-two part
    reshaped to (R, C * w / 32) uint32 words, so a tile of rows x columns is one contiguous 2-D load;
  * per-group fields (scales, zero points, NF4 absmax and its double-quant codes): flat uint32 words, read with
    a gather load at the word holding (row * n_groups + group).
Nothing is dequantized outside the kernel: the wrapper only reshapes.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from hqf_jax.ops import quant_grids as qg
from hqf_jax.ops import quant_pack as qp
from hqf_jax.quant.config import IntConfig, NF4Config, PhiGridConfig, QuantConfig
from hqf_jax.quant.qtensor import QTensor, pack


class KernelLayoutError(ValueError):
    """A weight or block configuration the kernels cannot run; the message names the fix."""


ELEM_FIELDS = ("idx", "q", "perm") + tuple(f"dev{j}" for j in range(1, 9))


@dataclasses.dataclass(frozen=True)
class PackedWeight:
    elem: dict[str, tuple[jax.Array, ...]]  # field -> parts, each (R, C * w / 32) uint32
    group: dict[str, tuple[jax.Array, ...]]  # field -> parts, each flat uint32
    bits: tuple[tuple[str, int], ...]
    cfg: QuantConfig
    rows: int
    cols: int

    @property
    def bits_dict(self) -> dict[str, int]:
        return dict(self.bits)

    @property
    def nbytes(self) -> int:
        return sum(int(a.size) * 4 for parts in (*self.elem.values(), *self.group.values()) for a in parts)


jax.tree_util.register_dataclass(PackedWeight, data_fields=["elem", "group"], meta_fields=["bits", "cfg", "rows", "cols"])


def prepare(q: QTensor) -> PackedWeight:
    """Kernel layout of a QTensor (phi, int or nf4). Columns must be a multiple of 32."""
    if not isinstance(q.cfg, (PhiGridConfig, IntConfig, NF4Config)):
        raise KernelLayoutError(f"no quantized kernel for {q.cfg.name}: use the bf16 XLA matmul")
    r, c = q.matrix_shape
    if c % 32:
        raise KernelLayoutError(f"the kernels need the input features ({c}) to be a multiple of 32; pad the weight")
    words = pack(q)
    elem: dict[str, list] = {}
    group: dict[str, list] = {}
    for name, b in q.bits:
        for w, _ in qp.split_widths(b):
            a = jnp.asarray(words[f"{name}.w{w}"])
            if name in ELEM_FIELDS:
                elem.setdefault(name, []).append(a.reshape(r, c * w // 32))
            else:
                group.setdefault(name, []).append(a)
    return PackedWeight(
        elem={k: tuple(v) for k, v in elem.items()}, group={k: tuple(v) for k, v in group.items()},
        bits=q.bits, cfg=q.cfg, rows=r, cols=c,
    )


def _mask(w: int) -> jnp.ndarray:
    return jnp.uint32(0xFFFFFFFF if w == 32 else (1 << w) - 1)


def read_elem(refs, bits: int, k0, bk: int) -> jnp.ndarray:
    """(BN, bk) uint32 codes of a per-weight field, columns [k0, k0 + bk) of this block's rows."""
    out = None
    for (w, o), ref in zip(qp.split_widths(bits), refs, strict=True):
        epw = 32 // w
        nw = bk // epw
        start = pl.multiple_of(k0 // epw, nw)
        words = ref[:, pl.ds(start, nw)]  # (BN, nw)
        bn = words.shape[0]
        shifts = lax.broadcasted_iota(jnp.uint32, (1, 1, epw), 2) * jnp.uint32(w)
        vals = lax.shift_right_logical(words[:, :, None], shifts) & _mask(w)
        vals = vals.reshape(bn, bk)
        if o:
            vals = lax.shift_left(vals, jnp.uint32(o))
        out = vals if out is None else out | vals
    return out


def read_group(refs, bits: int, flat_index: jnp.ndarray) -> jnp.ndarray:
    """uint32 codes of a per-group (flat) field at the given flat element indices (any shape)."""
    out = None
    for (w, o), ref in zip(qp.split_widths(bits), refs, strict=True):
        epw = 32 // w
        words = ref[flat_index // epw]
        sh = ((flat_index % epw) * w).astype(jnp.uint32)
        vals = lax.shift_right_logical(words, sh) & _mask(w)
        if o:
            vals = lax.shift_left(vals, jnp.uint32(o))
        out = vals if out is None else out | vals
    return out


def scale_value(codes: jnp.ndarray, scale_dtype: str) -> jnp.ndarray:
    """float32 value of stored scale bit patterns (bf16: the pattern is the top half of an f32)."""
    if scale_dtype == "fp32":
        return lax.bitcast_convert_type(codes, jnp.float32)
    return lax.bitcast_convert_type(lax.shift_left(codes, jnp.uint32(16)), jnp.float32)


def geometric_value(codes: jnp.ndarray, ratio: float, bits: int) -> jnp.ndarray:
    """Signed level +-ratio**-k of geometric-grid codes, computed with exp2 (no table gather)."""
    half = 1 << (bits - 1)
    k = (codes & jnp.uint32(half - 1)).astype(jnp.float32)
    mag = jnp.exp2(k * jnp.float32(-math.log2(ratio)))
    return jnp.where(codes >= jnp.uint32(half), -mag, mag)


def expand_groups(v: jnp.ndarray, bk: int) -> jnp.ndarray:
    """(BN, n) per-group values -> broadcastable to (BN, bk) (n == 1 stays (BN, 1))."""
    bn, n = v.shape
    if n == 1:
        return v
    return jnp.broadcast_to(v[:, :, None], (bn, n, bk // n)).reshape(bn, bk)


def decode_tile(pw_meta: PackedWeight, elem_refs: dict, group_refs: dict, table_refs: dict,
                row0, k0, kglob, bn: int, bk: int) -> jnp.ndarray:
    """Dequantized (BN, bk) float32 tile of rows [row0, row0 + bn), columns [kglob, kglob + bk).

    `k0` is the column offset inside this program's element-field block, `kglob` the absolute column (group
    index), `row0` the absolute first row (flat index of group fields)."""
    cfg = pw_meta.cfg
    bits = pw_meta.bits_dict
    cols = pw_meta.cols
    g = cfg.group_size or cols
    ng = cols // g
    ngt = max(1, bk // g)
    rows = row0 + lax.broadcasted_iota(jnp.int32, (bn, 1), 0)
    gcol = kglob // g + lax.broadcasted_iota(jnp.int32, (1, ngt), 1)
    flat = rows * ng + gcol  # (bn, ngt)

    def grp(name):
        return read_group(group_refs[name], bits[name], flat)

    if isinstance(cfg, PhiGridConfig):
        ratio = qg.resolve_ratio(cfg.ratio)
        s = expand_groups(scale_value(grp("scale"), cfg.scale_dtype), bk)
        def level(codes, nbits, table):
            if table in table_refs:  # gather load from a 2**bits-entry signed level table
                return table_refs[table][codes.astype(jnp.int32)]
            return geometric_value(codes, ratio, nbits)

        val = level(read_elem(elem_refs["idx"], bits["idx"], k0, bk), cfg.index_bits, "grid") * s
        for j in range(1, cfg.depth + 1):
            t = expand_groups(scale_value(grp(f"dev{j}_scale"), cfg.scale_dtype), bk)
            dc = read_elem(elem_refs[f"dev{j}"], bits[f"dev{j}"], k0, bk)
            if cfg.dev_kind == "uniform":
                q = 2 ** (cfg.dev_bits - 1) - 1
                val = val + (dc.astype(jnp.float32) - q) * (t * (1.0 / q))
            else:
                val = val + level(dc, cfg.dev_bits, "devgrid") * t
        return val
    if isinstance(cfg, IntConfig):
        s = expand_groups(scale_value(grp("scale"), cfg.scale_dtype), bk)
        code = read_elem(elem_refs["q"], bits["q"], k0, bk).astype(jnp.float32)
        if cfg.symmetric:
            return (code - (2 ** (cfg.bits - 1) - 1)) * s
        z = expand_groups(grp("zero").astype(jnp.float32), bk)
        return (code - z) * s
    if isinstance(cfg, NF4Config):
        s = nf4_scale(cfg, grp, group_refs, table_refs, flat)
        code = read_elem(elem_refs["q"], bits["q"], k0, bk).astype(jnp.int32)
        return table_refs["nf4"][code] * expand_groups(s, bk)
    raise KernelLayoutError(f"no kernel decode for {cfg.name}")


def nf4_scale(cfg: NF4Config, grp, group_refs: dict, table_refs: dict, flat) -> jnp.ndarray:
    """float32 NF4 absmax per group at the flat group indices (double quant: 8-bit code through the dynamic map
    times its second-level fp32 scale plus the offset; grp(name) reads a per-group field at `flat`)."""
    if not cfg.double_quant:
        return lax.bitcast_convert_type(grp("absmax"), jnp.float32)
    aq = grp("absmax_q").astype(jnp.int32)
    a2 = lax.bitcast_convert_type(read_group(group_refs["absmax2"], 32, flat // cfg.dq_block), jnp.float32)
    off = lax.bitcast_convert_type(read_group(group_refs["offset"], 32, flat * 0), jnp.float32)
    return jnp.maximum(table_refs["dmap"][aq] * a2 + off, 0.0)


def tables_for(cfg: QuantConfig, levels: str = "exp2") -> dict[str, jnp.ndarray]:
    """Small lookup tables a kernel reads with gather loads (NF4 levels, the double-quant dynamic map, and with
    levels="table" the signed geometric levels instead of computing them with exp2)."""
    if isinstance(cfg, PhiGridConfig) and levels == "table":
        r = qg.resolve_ratio(cfg.ratio)
        t = {"grid": jnp.asarray(qg.geometric_levels(r, cfg.index_bits))}
        if cfg.depth and cfg.dev_kind == "grid":
            t["devgrid"] = jnp.asarray(qg.geometric_levels(r, cfg.dev_bits))
        return t
    if isinstance(cfg, NF4Config):
        t = {"nf4": jnp.asarray(qg.NF4_LEVELS)}
        if cfg.double_quant:
            t["dmap"] = jnp.asarray(qg.dynamic_map())
        return t
    return {}


def check_blocks(pw: PackedWeight, block_n: int, block_k: int, split_k: int, min_block_n: int = 16) -> None:
    def pow2(v):
        return v > 0 and v & (v - 1) == 0

    g = pw.cfg.group_size or pw.cols
    problems = []
    if not pow2(block_n) or block_n < min_block_n:
        problems.append(f"block_n={block_n} must be a power of two >= {min_block_n}")
    if not pow2(block_k) or block_k < 32:
        problems.append(f"block_k={block_k} must be a power of two >= 32")
    if pw.rows % block_n:
        problems.append(f"block_n={block_n} must divide the {pw.rows} output features")
    if pw.cols % (block_k * split_k):
        problems.append(f"block_k*split_k={block_k * split_k} must divide the {pw.cols} input features")
    if g % block_k and block_k % g:
        problems.append(f"block_k={block_k} and group_size={g} must divide one another")
    if problems:
        raise KernelLayoutError("; ".join(problems))


def next_pow2(n: int) -> int:
    return 1 << max(0, int(np.ceil(np.log2(max(n, 1)))))


def placeholder(cfg: QuantConfig, rows: int, cols: int) -> PackedWeight:
    """An all-zero PackedWeight of the right shapes (no quantization work): for lowering/compile checks."""
    from hqf_jax.quant.qtensor import field_bits_per_element

    g = getattr(cfg, "group_size", None) or cols
    n_groups = rows * (cols // g)
    bits = field_bits_per_element(cfg, cols)
    numel = {name: rows * cols for name in bits if name in ELEM_FIELDS}
    if isinstance(cfg, NF4Config) and cfg.double_quant:
        numel.update(absmax_q=n_groups, absmax2=-(-n_groups // cfg.dq_block), offset=1)
    elem, group = {}, {}
    for name, b in bits.items():
        for w, _ in qp.split_widths(b):
            if name in ELEM_FIELDS:
                elem.setdefault(name, []).append(jnp.zeros((rows, cols * w // 32), jnp.uint32))
            else:
                group.setdefault(name, []).append(jnp.zeros((qp.part_words(numel.get(name, n_groups), w),), jnp.uint32))
    return PackedWeight(elem={k: tuple(v) for k, v in elem.items()}, group={k: tuple(v) for k, v in group.items()},
                        bits=tuple(sorted(bits.items())), cfg=cfg, rows=rows, cols=cols)
