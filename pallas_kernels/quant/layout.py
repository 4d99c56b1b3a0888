"""The kernel-side layout of a packed quantized weight (PackedWeight), the block checks every form shares, and
the flattening of a PackedWeight into the positional operands of a pallas_call.

Layout, from the same packed words that are written to disk (hqf_jax.ops.quant_pack, hqf_jax.quant.qtensor.pack):
  * per-weight fields (R, C) (indices, deviations, int/NF4 codes, the sort permutation): each power-of-two part
    reshaped to (R, C * w / 32) uint32 words, so a tile of rows x columns is one contiguous 2-D load;
  * per-group fields (scales, zero points, NF4 absmax and its double-quant codes): flat uint32 words, read with
    a gather load at the word holding (row * n_groups + group).
Nothing is dequantized outside the kernel: from_words only reshapes. The quantizer side builds a PackedWeight
with hqf_jax.quant.linear.prepare(q); this package never imports hqf_jax.quant.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax.ops import quant_pack as qp

KERNEL_METHODS = ("phi", "int", "nf4")  # config.method values with a kernel decoder (pallas_kernels/quant/decode.py)
ELEM_FIELDS = ("idx", "q", "perm") + tuple(f"dev{j}" for j in range(1, 9))


class KernelLayoutError(ValueError):
    """A weight or block configuration the kernels cannot run; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class PackedWeight:
    elem: dict[str, tuple[jax.Array, ...]]  # field -> parts, each (R, C * w / 32) uint32
    group: dict[str, tuple[jax.Array, ...]]  # field -> parts, each flat uint32
    bits: tuple[tuple[str, int], ...]
    cfg: object  # the quantization config (hqf_jax.quant.config): read by attribute, dispatched on cfg.method
    rows: int
    cols: int

    @property
    def bits_dict(self) -> dict[str, int]:
        return dict(self.bits)

    @property
    def nbytes(self) -> int:
        return sum(int(a.size) * 4 for parts in (*self.elem.values(), *self.group.values()) for a in parts)


jax.tree_util.register_dataclass(PackedWeight, data_fields=["elem", "group"], meta_fields=["bits", "cfg", "rows", "cols"])


def from_words(words: dict, bits, cfg, rows: int, cols: int) -> PackedWeight:
    """Kernel layout of packed words ('<field>.w<width>' -> flat uint32, as qtensor.pack writes them) of an
    (rows, cols) matrix. Columns must be a multiple of 32."""
    if cfg.method not in KERNEL_METHODS:
        raise KernelLayoutError(f"no quantized kernel for {cfg.name}: use the bf16 XLA matmul")
    if cols % 32:
        raise KernelLayoutError(f"the kernels need the input features ({cols}) to be a multiple of 32; pad the weight")
    elem: dict[str, list] = {}
    group: dict[str, list] = {}
    for name, b in bits:
        for w, _ in qp.split_widths(b):
            a = jnp.asarray(words[f"{name}.w{w}"])
            if name in ELEM_FIELDS:
                elem.setdefault(name, []).append(a.reshape(rows, cols * w // 32))
            else:
                group.setdefault(name, []).append(a)
    return PackedWeight(
        elem={k: tuple(v) for k, v in elem.items()}, group={k: tuple(v) for k, v in group.items()},
        bits=tuple(bits), cfg=cfg, rows=rows, cols=cols,
    )


def check_blocks(pw: PackedWeight, block_n: int, block_k: int, split_k: int, min_block_n: int = 16,
                 group_check: bool = True) -> None:
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
    if group_check and g % block_k and block_k % g:
        problems.append(f"block_k={block_k} and group_size={g} must divide one another")
    if problems:
        raise KernelLayoutError("; ".join(problems))


def next_pow2(n: int) -> int:
    return 1 << max(0, int(np.ceil(np.log2(max(n, 1)))))


def flatten(pw: PackedWeight, tables: dict):
    """(elem names, group names, table names, operands): the packed fields, then the group fields, then the
    lookup tables, each in sorted name order (unflatten inverts it inside the kernel)."""
    elem_names = sorted(pw.elem)
    group_names = sorted(pw.group)
    table_names = sorted(tables)
    arrays = [a for n in elem_names for a in pw.elem[n]] + [a for n in group_names for a in pw.group[n]]
    arrays += [tables[n] for n in table_names]
    return elem_names, group_names, table_names, arrays


def unflatten(refs, pw: PackedWeight, elem_names, group_names, table_names):
    """Kernel refs back to (elem field -> part refs, group field -> part refs, table name -> ref)."""
    refs = list(refs)
    elem, group, tables = {}, {}, {}
    for n in elem_names:
        k = len(pw.elem[n])
        elem[n], refs = refs[:k], refs[k:]
    for n in group_names:
        k = len(pw.group[n])
        group[n], refs = refs[:k], refs[k:]
    for n in table_names:
        tables[n], refs = refs[0], refs[1:]
    assert not refs
    return elem, group, tables
