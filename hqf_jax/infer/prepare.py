"""The byte LM's weights for inference: prepare_model (compute dtype, optional quantization of the dense layers)
and the bytes a decode step reads (weight_bytes, array_bytes)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from hqf_jax.infer.generator import EngineError
from hqf_jax.nn.retnet import RetNetLM

DTYPES = ("float32", "bfloat16")
QUANT_IMPLS = ("auto", "reference", "pallas", "mosaic")


def prepare_model(model: RetNetLM, dtype: str = "bfloat16", quant: str | None = None,
                  quant_impl: str = "auto", batch: int = 1) -> tuple[RetNetLM, dict]:
    """A copy of ``model`` for inference: compute in ``dtype`` with parameters stored in it, the dense layers
    optionally quantized (hqf_jax.quant: int8, int4, nf4, phi5u8, ...); quant_impl "auto" picks each layer's
    kernel layout for decode batch ``batch`` (hqf_jax.quant.model.auto_impl). Returns (model, quant report)."""
    if not isinstance(model, RetNetLM):
        raise EngineError(f"the engine runs the byte LM (RetNetLM); got {type(model).__name__}")
    if dtype not in DTYPES:
        raise EngineError(f"engine dtype {dtype!r} is not one of {DTYPES}")
    if quant_impl not in QUANT_IMPLS:
        raise EngineError(f"quant_impl {quant_impl!r} is not one of {QUANT_IMPLS}")
    if batch < 1:
        raise EngineError(f"batch={batch}: give the decode batch the quantized layers are laid out for, >= 1")
    if model.cfg.mixer != "retention":
        raise EngineError("the engine decodes retention models only (model.mixer='attention' keeps no state)")
    cfg = dataclasses.replace(model.cfg, compute_dtype=dtype)
    fresh = nnx.eval_shape(lambda: RetNetLM(cfg, nnx.Rngs(0)))
    graphdef, _, rest = nnx.split(fresh, nnx.Param, ...)
    params = nnx.state(model, nnx.Param)
    _, _, old_rest = nnx.split(model, nnx.Param, ...)
    out = nnx.merge(graphdef, params, old_rest)
    report = {}
    if quant:
        from hqf_jax.quant.model import quantize_model

        # auto: per layer, the dispatcher's table (pallas_kernels/quant/layout_table.py) on a GPU, the reference
        # on a CPU
        out, report = quantize_model(out, quant, impl=quant_impl, batch=batch)
    wdt = jnp.dtype(dtype)
    gd, p, r = nnx.split(out, nnx.Param, ...)
    p = jax.tree.map(lambda x: x.astype(wdt) if jnp.issubdtype(x.dtype, jnp.floating) else x, p)
    return nnx.merge(gd, p, r), report


def weight_bytes(model: nnx.Module) -> int:
    """Bytes of every array the decode step reads once per step (parameters, packed quantized weights)."""
    return int(sum(array_bytes(x) for x in jax.tree.leaves(nnx.state(model))))


def array_bytes(x) -> int:
    """Stored bytes of an array: sub-byte types (int4, the Hopper form's codes) count their packed size."""
    bits = jnp.iinfo(x.dtype).bits if jnp.issubdtype(x.dtype, jnp.integer) else x.dtype.itemsize * 8
    return -(-x.size * bits // 8)

