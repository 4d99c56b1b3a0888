"""The block configs the quantized kernel benchmark sweeps per (kernel, batch), most promising first, and the
checks of whether one fits a weight. Shared by bench/quant_kernels.py (the sweep) and its tests; importing this
module loads Pallas's Triton backend (pallas_kernels.quant)."""

from __future__ import annotations

import dataclasses

from pallas_kernels.quant import BlockConfig, GatherBlockConfig, KernelLayoutError, check_blocks
from pallas_kernels.quant.dispatch import auto_split
from pallas_kernels.quant.gemv import MAX_VEC_BATCH, vec_layout
from pallas_kernels.quant.layout import next_pow2
from pallas_kernels.quant.tc import check_tc

VEC_CONFIGS = [BlockConfig(block_n=bn, block_k=bk, num_warps=nw, num_stages=st, mode="vec")
               for bn, bk, nw, st in [(1, 1024, 1, 4), (2, 4096, 4, 1), (1, 2048, 1, 3), (1, 4096, 1, 1), (1, 512, 1, 4),
                                      (2, 2048, 2, 3), (2, 1024, 1, 4), (1, 1024, 2, 4), (4, 4096, 4, 1), (1, 2048, 2, 3),
                                      (4, 1024, 4, 3), (2, 4096, 2, 1)]]


def tc_configs(batch: int, level: str, nf4: bool = False, pw=None) -> list:
    """Tensor-core form configs (most promising first): batch tile block_m 16-64, (block_n, block_k, warps,
    stages) by batch, split_k filling the GPU's 132 SMs when the weight is known; the first tile also with bf16
    decode arithmetic (second), the other operand order and, for NF4, the table-load lookup."""
    bm = min(64, max(16, next_pow2(batch)))
    if batch <= 16:
        tiles = [(128, 256, 4, 3), (64, 128, 4, 4), (128, 128, 4, 3), (256, 256, 8, 3)]
    elif batch <= 64:
        tiles = [(128, 128, 4, 3), (128, 256, 4, 3), (256, 128, 8, 3), (64, 256, 4, 3)]
    else:
        tiles = [(128, 128, 4, 3), (256, 128, 8, 3), (128, 256, 8, 3), (256, 64, 8, 4)]
    if level == "full":
        tiles += [(bn, bk, 8 if nw == 4 else 4, st + 1) for bn, bk, nw, st in tiles]
    cfgs = [BlockConfig(block_n=bn, block_k=bk, block_b=bm, num_warps=nw, num_stages=st, mode="tc",
                        split_k=auto_split(pw, batch, bm, bn, bk) if pw is not None else 1)
            for bn, bk, nw, st in tiles]
    cfgs.insert(1, dataclasses.replace(cfgs[0], cvt="bf16"))  # (int8: dropped by _fits, cvt bf16 needs <= 4 bits)
    cfgs.append(dataclasses.replace(cfgs[0], swap=False))
    if nf4:
        cfgs.append(dataclasses.replace(cfgs[0], lut="load"))
    return cfgs


def sweep_configs(kind: str, batch: int, level: str, phi: bool = False, tc: bool = False, pw=None):
    """Block configs tried per (kernel, batch), most promising first; the fastest that passes its check is
    reported. tc: the weight can take the tensor-core form (int / NF4), "nf4" for NF4 (adds the lut variant)."""
    if kind == "fused" and tc and batch >= 8:
        cfgs = tc_configs(batch, level, tc == "nf4", pw)
        return cfgs[: 1 if level == "none" else None] + sweep_configs(kind, batch, level, phi)[:2]
    if kind == "gather":
        cfgs = [GatherBlockConfig(block_n=16, block_k=32, split_k=4), GatherBlockConfig(block_n=32, block_k=32, split_k=2)]
        if phi:
            cfgs.append(GatherBlockConfig(block_n=16, block_k=32, split_k=4, levels="table"))
        return cfgs[: 1 if level == "none" else None]
    if batch <= 16:
        cfgs = [
            BlockConfig(block_n=32, block_k=128, split_k=4, num_warps=4, num_stages=3),
            BlockConfig(block_n=64, block_k=128, split_k=2, num_warps=4, num_stages=3),
            BlockConfig(block_n=32, block_k=64, split_k=4, num_warps=4, num_stages=4),
            BlockConfig(block_n=32, block_k=256, split_k=2, num_warps=4, num_stages=3),
        ]
        if batch <= 2:
            cfgs = [dataclasses.replace(c, mode="fma") for c in cfgs[:2]] + [dataclasses.replace(cfgs[1], mode="dot")]
        if level == "full":
            cfgs += [dataclasses.replace(c, num_warps=8) for c in cfgs] + [
                BlockConfig(block_n=64, block_k=64, split_k=8, num_warps=4, num_stages=4),
                BlockConfig(block_n=16, block_k=256, split_k=4, num_warps=4, num_stages=4)]
        if batch <= MAX_VEC_BATCH:  # the GEMV form (pallas_kernels/quant/gemv.py) first; φ specs also try it
            cfgs = VEC_CONFIGS + cfgs  # with level tables (the first three configs below)
    elif batch <= 64:  # tensor-core tiles of the batch itself (block_b = batch rounded up to a power of two)
        bb = max(16, 1 << (batch - 1).bit_length())
        cfgs = [
            BlockConfig(block_n=32, block_k=128, block_b=bb, split_k=2, num_warps=4, num_stages=3),
            BlockConfig(block_n=64, block_k=64, block_b=bb, split_k=1, num_warps=4, num_stages=3),
            BlockConfig(block_n=64, block_k=128, block_b=bb, split_k=2, num_warps=4, num_stages=3),
            BlockConfig(block_n=128, block_k=64, block_b=bb, split_k=1, num_warps=8, num_stages=3),
        ]
        if level == "full":
            cfgs += [BlockConfig(block_n=32, block_k=64, block_b=bb, split_k=4, num_warps=4, num_stages=4),
                     BlockConfig(block_n=64, block_k=128, block_b=bb, split_k=1, num_warps=8, num_stages=4)]
    else:
        cfgs = [
            BlockConfig(block_n=64, block_k=64, block_b=64, split_k=1, num_warps=4, num_stages=3),
            BlockConfig(block_n=128, block_k=64, block_b=64, split_k=1, num_warps=8, num_stages=3),
            BlockConfig(block_n=64, block_k=128, block_b=128, split_k=1, num_warps=8, num_stages=3),
        ]
        if level == "full":
            cfgs += [BlockConfig(block_n=128, block_k=64, block_b=128, split_k=1, num_warps=8, num_stages=4)]
    if phi:
        cfgs += [dataclasses.replace(c, levels="table") for c in cfgs[:3]]
    cfgs = cfgs[: 1 if level == "none" else None]
    if kind == "fused" and tc and 3 <= batch < 8 and level != "none":  # the tensor-core form, padded to 16 rows
        cfgs += tc_configs(batch, level, tc == "nf4", pw)[:1]
    return cfgs


def fits(pw, c) -> bool:
    try:
        if getattr(c, "mode", None) == "tc":
            check_tc(pw, c)
            check_blocks(pw, c.block_n, c.block_k, c.split_k, group_check=False)
            return True
        vec = getattr(c, "mode", None) == "vec"
        check_blocks(pw, c.block_n, c.block_k, c.split_k, min_block_n=1 if vec else 16)
        if vec:
            vec_layout(pw, c.block_k)
        return True
    except KernelLayoutError:
        return False


def cfg_str(c) -> str:
    mode = getattr(c, "mode", "gather")
    acc = f" {c.acc}" if mode == "vec" else (f" {c.lut} {c.cvt}{'' if c.swap else ' noswap'}" if mode == "tc" else "")
    return (f"n{c.block_n} k{c.block_k} b{c.block_b or '-'} s{c.split_k} w{c.num_warps} st{c.num_stages} "
            f"{mode}{acc} {c.levels}")
