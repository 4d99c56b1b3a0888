"""Quantized matmul kernels (Pallas, Triton backend) on the packed words of a quantized weight, one module per
kernel form over one shared decode module:

    layout    PackedWeight (the kernel layout of the packed words), block checks, operand flattening
    decode    field readers and one decoder per codec (phi-grid, int, NF4): how packed fields become values
    matmul    tiled form (modes "dot" and "fma")
    gemv      GEMV form (mode "vec", batch <= 8 rows per program)
    tc        tensor-core form for int / NF4 at batch >= 8 (bit planes decoded in registers feed tl.dot)
    gather    row-sorted form (sort=true weights: y_i = sum_j S[i,j] x[P[i,j]])
    dispatch  BlockConfig, default_blocks, fit_smem and quant_matmul, which picks the form (choose, explain)
    routes    the ROUTES table (measured crossovers, H200 sweep of 2026-11-30): the form by batch, Triton family
    mosaic    the Hopper form (Mosaic GPU) for int4 / int8 / NF4 / phi4, with its layout and plan in mosaic_layout
    layout_table  LAYOUTS: which family (Hopper or Triton) a layer is stored for, by method, shape, decode batch

Imports run one way: layout <- decode <- {matmul, gemv, gather, tc}, routes <- dispatch <- this __init__. The package
imports jax and hqf_jax.ops only, never hqf_jax.quant or anything above it: the quantizer side builds a
PackedWeight with hqf_jax.quant.linear.prepare(q). References: hqf_jax/ops/quant_matmul.py.
"""

from pallas_kernels.quant.dispatch import (
    AUTO_FORMS,
    ROUTES,
    BlockConfig,
    Route,
    choose,
    default_blocks,
    default_tc_blocks,
    explain,
    quant_matmul,
)
from pallas_kernels.quant.gather import GatherBlockConfig, gather_matmul
from pallas_kernels.quant.layout import KernelLayoutError, PackedWeight, check_blocks, from_words

__all__ = ["AUTO_FORMS", "ROUTES", "Route", "choose", "default_tc_blocks", "explain", "BlockConfig", "GatherBlockConfig", "KernelLayoutError", "PackedWeight", "check_blocks",
           "default_blocks", "from_words", "gather_matmul", "quant_matmul"]
