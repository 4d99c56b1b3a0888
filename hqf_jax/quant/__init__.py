"""Quantizers over parameter pytrees: one API for the phi-grid codec and the int/NF4/float baselines, honest
bit accounting, packed safetensors storage. See docs/quant.md."""

from hqf_jax.quant.config import (
    PRESETS,
    FloatConfig,
    IntConfig,
    NF4Config,
    PhiGridConfig,
    QuantConfigError,
    parse_method,
)
from hqf_jax.quant.qtensor import (
    QTensor,
    accounting,
    bits_per_weight,
    dequantize,
    error_bound,
    pack,
    quantize,
    unpack,
)
from hqf_jax.quant.storage import load_quantized, save_quantized
from hqf_jax.quant.tree import matrices, quantize_tree, restore_tree, tree_accounting
