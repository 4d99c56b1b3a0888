"""A quantized dense product for the models' Linear layers, with the implementation chosen by config:

    y = qlinear(x, q, impl="reference")   # dequantize in XLA, bf16 matmul (any codec, any device)
    y = qlinear(x, q, impl="pallas")      # fused Pallas kernel on the packed words (phi / int / NF4; GPU, or
                                          # interpret=True on CPU); never writes the dequantized weight

x (..., K) with q quantizing a Flax kernel (K, N) -> y (..., N) in x's dtype (bf16 products, f32 accumulation).
For impl="pallas" pass q through prepare() once (hqf_jax.quant.linear.prepare_for) and reuse the result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hqf_jax.ops.quant_matmul import dequant_matmul_ref
from hqf_jax.quant.config import QuantConfigError
from hqf_jax.quant.qtensor import QTensor, dequantize_matrix

IMPLS = ("reference", "pallas")


def prepare_for(q: QTensor, impl: str):
    """What qlinear consumes for this impl: the QTensor itself, or its kernel layout (PackedWeight)."""
    if impl == "reference":
        return q
    if impl == "pallas":
        from pallas_kernels.quant_common import prepare

        return prepare(q)
    raise QuantConfigError(f"quantized linear impl {impl!r}: use one of {IMPLS}")


def qlinear(x: jax.Array, w, impl: str = "reference", *, interpret: bool = False, blocks=None) -> jax.Array:
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if impl == "reference":
        if not isinstance(w, QTensor):
            raise QuantConfigError("impl='reference' takes the QTensor (prepare_for(q, 'reference'))")
        y = dequant_matmul_ref(x2, dequantize_matrix(w))
    elif impl == "pallas":
        from pallas_kernels.quant_common import PackedWeight
        from pallas_kernels.quant_matmul import quant_matmul

        if not isinstance(w, PackedWeight):
            raise QuantConfigError("impl='pallas' takes the kernel layout: w = prepare_for(q, 'pallas')")
        y = quant_matmul(x2, w, blocks=blocks, interpret=interpret)
    else:
        raise QuantConfigError(f"quantized linear impl {impl!r}: use one of {IMPLS}")
    return jnp.reshape(y, (*lead, y.shape[-1]))
