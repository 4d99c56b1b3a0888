"""A quantized dense product for the models' Linear layers, with the implementation chosen by config:

    y = qlinear(x, q, impl="reference")   # dequantize in XLA, bf16 matmul (any codec, any device)
    y = qlinear(x, q, impl="pallas")      # fused Pallas kernel on the packed words (phi / int / NF4; GPU, or
                                          # interpret=True on CPU); never writes the dequantized weight
    y = qlinear(x, q, impl="mosaic")      # Hopper (Mosaic GPU) kernel, int4 / int8 / NF4 / phi4: codes group
                                          # by group, wgmma fed from registers (pallas_kernels/quant/mosaic.py)

x (..., K) with q quantizing a Flax kernel (K, N) -> y (..., N) in x's dtype (bf16 products, f32 accumulation).
For impl="pallas" pass q through prepare_for(q, "pallas") (= prepare(q), the kernels' PackedWeight) once and
reuse the result; for impl="mosaic" through prepare_for(q, "mosaic") (its MosaicWeight; a KernelLayoutError says
why the form cannot take a weight: it needs 4-bit codes or int8, groups of 64/128/256, outputs a multiple of 128). The
kernels (pallas_kernels/quant/) are imported inside the functions that use them, so that importing this module does
not load Pallas's Triton backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hqf_jax.ops import quant_pack as qp
from hqf_jax.ops.quant_matmul import dequant_matmul_ref
from hqf_jax.quant.config import NF4Config, QuantConfig, QuantConfigError
from hqf_jax.quant.qtensor import QTensor, dequantize_matrix, field_bits_per_element, pack

IMPLS = ("reference", "pallas", "mosaic")


def prepare(q: QTensor):
    """The kernels' layout (PackedWeight) of a QTensor (phi, int or nf4); input features a multiple of 32."""
    from pallas_kernels.quant.layout import from_words  # here, not at the top: keeps Triton unloaded

    r, c = q.matrix_shape
    return from_words(pack(q), q.bits, q.cfg, r, c)


def placeholder(cfg: QuantConfig, rows: int, cols: int):
    """An all-zero PackedWeight of the right shapes (no quantization work): for lowering/compile checks."""
    from pallas_kernels.quant.layout import ELEM_FIELDS, from_words  # here, not at the top: keeps Triton unloaded

    g = getattr(cfg, "group_size", None) or cols
    n_groups = rows * (cols // g)
    bits = field_bits_per_element(cfg, cols)
    numel = {name: rows * cols for name in bits if name in ELEM_FIELDS}
    if isinstance(cfg, NF4Config) and cfg.double_quant:
        numel.update(absmax_q=n_groups, absmax2=-(-n_groups // cfg.dq_block), offset=1)
    words = {f"{name}.w{w}": jnp.zeros((qp.part_words(numel.get(name, n_groups), w),), jnp.uint32)
             for name, b in bits.items() for w, _ in qp.split_widths(b)}
    return from_words(words, tuple(sorted(bits.items())), cfg, rows, cols)


def prepare_for(q: QTensor, impl: str):
    """What qlinear consumes for this impl: the QTensor itself, or its kernel layout (PackedWeight)."""
    if impl == "reference":
        return q
    if impl == "pallas":
        return prepare(q)
    if impl == "mosaic":
        from pallas_kernels.quant.mosaic_layout import lut_levels, prepare_mosaic_jit  # here: keeps Pallas unloaded

        # table codecs (NF4, phi4) store their codes pre-shuffled for the lookup: NF4 4096x11008 batch 16 18.9 µs
        # against 21.9 with the relayout in the kernel (one process, H200, 2026-12-01, docs/BENCHMARKS.md)
        return prepare_mosaic_jit(prepare(q), shuffle=lut_levels(q.cfg) is not None)
    raise QuantConfigError(f"quantized linear impl {impl!r}: use one of {IMPLS}")


def impl_of(w) -> str:
    """The qlinear impl a prepared weight (prepare_for's output) is for: reference, pallas or mosaic."""
    if isinstance(w, QTensor):
        return "reference"
    from pallas_kernels.quant.layout import PackedWeight  # the layout modules: no Triton import
    from pallas_kernels.quant.mosaic_layout import MosaicWeight

    if isinstance(w, PackedWeight):
        return "pallas"
    if isinstance(w, MosaicWeight):
        return "mosaic"
    raise QuantConfigError(f"{type(w).__name__} is not a prepared quantized weight (prepare_for's output)")


def qlinear(x: jax.Array, w, impl: str = "reference", *, interpret: bool = False, blocks=None) -> jax.Array:
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if impl == "reference":
        if not isinstance(w, QTensor):
            raise QuantConfigError("impl='reference' takes the QTensor (prepare_for(q, 'reference'))")
        y = dequant_matmul_ref(x2, dequantize_matrix(w))
    elif impl == "pallas":
        from pallas_kernels.quant import PackedWeight, quant_matmul  # here, not at the top: keeps Triton unloaded

        if not isinstance(w, PackedWeight):
            raise QuantConfigError("impl='pallas' takes the kernel layout: w = prepare_for(q, 'pallas')")
        y = quant_matmul(x2, w, blocks=blocks, interpret=interpret)
    elif impl == "mosaic":
        from pallas_kernels.quant.mosaic import MosaicWeight, mosaic_matmul_jit  # here: keeps Pallas unloaded

        if not isinstance(w, MosaicWeight):
            raise QuantConfigError("impl='mosaic' takes the Hopper layout: w = prepare_for(q, 'mosaic')")
        if jax.default_backend() != "gpu":
            raise QuantConfigError("impl='mosaic' runs on a Hopper GPU only (Mosaic GPU has no CPU path): use "
                                   "impl='pallas' (interpret mode) or 'reference' here")
        # jitted, as quant_matmul is: layers of one shape share one traced kernel, lowered once per program (the
        # un-jitted call lowered the whole Mosaic GPU kernel again at each of a 125M step's 96 call sites)
        y = mosaic_matmul_jit(x2, w)
    else:
        raise QuantConfigError(f"quantized linear impl {impl!r}: use one of {IMPLS}")
    return jnp.reshape(y, (*lead, y.shape[-1]))
