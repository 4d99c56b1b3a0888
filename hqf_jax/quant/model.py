"""Quantized dense layers inside a model: swap every chosen ``nnx.Linear`` for a ``QuantLinear`` that keeps
its kernel packed and multiplies through ``qlinear`` (XLA dequantize-then-matmul, or the fused Pallas kernel).

    model = quantize_model(model, "nf4", impl="pallas")     # in place; returns the model and its accounting

Selectable from the command line: ``python -m eval.bpb --run RUN --quant nf4 --quant-impl pallas``.
"""

from __future__ import annotations

import jax
from flax import nnx

from hqf_jax.quant.config import QuantConfigError
from hqf_jax.quant.linear import IMPLS, prepare_for, qlinear
from hqf_jax.quant.qtensor import QTensor, accounting, quantize


def auto_impl(q: QTensor, batch: int = 1) -> str:
    """impl="auto": "reference" on a CPU; on a GPU the layout the dispatcher's first level picks for this weight
    and decode batch (pallas_kernels/quant/layout_table.py: "mosaic", the Hopper form, or "pallas", the Triton
    forms)."""
    if jax.default_backend() != "gpu":
        return "reference"
    from pallas_kernels.quant.layout_table import layout_form  # here, not at the top: keeps Pallas unloaded

    k, n = q.shape
    bits = getattr(q.cfg, "bits", getattr(q.cfg, "index_bits", 4))  # NF4's config has neither: its codes are 4-bit
    return "mosaic" if layout_form(q.cfg.method, bits, k, n, batch) == "mosaic" else "pallas"


def prepare_auto(q: QTensor, impl: str = "reference", batch: int = 1) -> tuple[str, object]:
    """(impl, prepared weight) of a QTensor: impl "auto" resolved for decode batch ``batch`` (auto_impl); a weight
    the Hopper form cannot take keeps the Triton forms."""
    if impl == "auto":
        impl = auto_impl(q, batch)
    if impl not in IMPLS:
        raise QuantConfigError(f"quantized linear impl {impl!r}: use auto or one of {IMPLS}")
    if impl == "mosaic":
        from pallas_kernels.quant.layout import KernelLayoutError  # the layout module: no Triton import

        try:
            return impl, prepare_for(q, impl)
        except KernelLayoutError:  # a layer the Hopper form cannot take keeps the Triton forms
            return "pallas", prepare_for(q, "pallas")
    return impl, prepare_for(q, impl)


class QuantLinear(nnx.Module):
    """Drop-in for a bias-free ``nnx.Linear``: y = x @ dequant(W) with W stored packed. impl "auto" picks by
    backend, shape and the decode batch ``batch`` (auto_impl)."""

    def __init__(self, q: QTensor, impl: str = "reference", interpret: bool | None = None, batch: int = 1):
        self.impl, w = prepare_auto(q, impl, batch)
        self.weight = nnx.Variable(w)
        self.interpret = jax.default_backend() == "cpu" if interpret is None else interpret
        self.in_features, self.out_features = q.shape

    def __call__(self, x: jax.Array) -> jax.Array:
        return qlinear(x, self.weight.get_value(), self.impl, interpret=self.interpret)


def _linears(model: nnx.Module):
    """(path, layer, kernel (in, out), bias) of every dense layer: flax's nnx.Linear (kernel (in, out)) and the HF
    decoder's Linear of RetNPhi and HFDecoderLM (weight (out, in)). A LoRA layer must be merged first."""
    from hqf_jax.nn.hf_decoder import Linear as HFLinear  # here: the quantizer does not load the decoder otherwise
    from hqf_jax.nn.lora import LoRALinear

    for path, node in nnx.iter_graph(model):
        if not path:
            continue
        if isinstance(node, nnx.Linear):
            yield path, node.kernel.get_value(), node.bias
        elif isinstance(node, LoRALinear):
            raise QuantConfigError(f"{'/'.join(map(str, path))} holds a LoRA adapter: merge the adapters first "
                                   "(hqf_jax.nn.lora.merge(model))")
        elif isinstance(node, HFLinear):
            yield path, node.weight.get_value().T, node.bias


def quantize_model(model: nnx.Module, method, impl: str = "reference", min_size: int = 4096,
                   skip: tuple[str, ...] = ("head",), interpret: bool | None = None, batch: int = 1):
    """Replace every bias-free dense layer (``nnx.Linear``, or the HF decoder's ``Linear`` of RetNPhi) whose
    kernel has >= ``min_size`` weights (and whose path names none of ``skip``) by a ``QuantLinear`` (impl "auto":
    per layer for decode batch ``batch``, auto_impl). Returns (model, {path: accounting dict})."""
    report = {}
    for path, kernel, bias in list(_linears(model)):
        name = "/".join(str(p) for p in path)
        if bias is not None or kernel.size < min_size or any(s in name for s in skip):
            continue
        q = quantize(kernel, method)
        parent = model
        for p in path[:-1]:
            parent = parent[p] if isinstance(p, int) else getattr(parent, p)
        new = QuantLinear(q, impl, interpret, batch)
        if isinstance(path[-1], int):
            parent[path[-1]] = new
        else:
            setattr(parent, path[-1], new)
        report[name] = accounting(q)
    if not report:
        raise QuantConfigError(f"no dense layer with >= {min_size} weights to quantize; lower min_size")
    return model, report
