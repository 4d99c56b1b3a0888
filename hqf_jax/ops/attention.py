"""Causal softmax attention: the fused form (``jax.nn.dot_product_attention``, XLA or cuDNN flash
attention) beside its plain-jnp reference, same signature, tested against each other.

Layout is (B, T, H, D) for q, k, v and the result, as ``jax.nn.dot_product_attention`` takes it.

``implementation``: "xla" (any backend), "cudnn" (NVIDIA GPU of compute capability >= 8.0, bfloat16/float16
only) or "auto", which picks cuDNN where it can run and XLA elsewhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def resolve_impl(impl: str, dtype) -> str:
    """"auto" -> "cudnn" on an Ampere-or-newer NVIDIA GPU with a 16-bit dtype, else "xla"; explicit values pass
    through."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention implementation {impl!r} is not one of {ATTENTION_IMPLS}")
    if impl != "auto":
        return impl
    sixteen_bit = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if sixteen_bit and _cudnn_gpu() else "xla"


def _cudnn_gpu() -> bool:
    """A GPU on which cuDNN's flash attention runs: NVIDIA, compute capability 8.0 (Ampere) or newer."""
    if jax.default_backend() != "gpu":
        return False
    try:
        return float(jax.devices()[0].compute_capability) >= 8.0
    except (AttributeError, TypeError, ValueError):  # no capability reported (e.g. ROCm): leave it to XLA
        return False


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str = "auto") -> jax.Array:
    """softmax(q k^T / sqrt(D) + causal mask) v over (B, T, H, D) arrays, through jax.nn.dot_product_attention."""
    impl = resolve_impl(implementation, q.dtype)
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)


def causal_attention_reference(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """The same maths in plain jnp, float32 inside: the reference the fused form is tested against."""
    t, d = q.shape[1], q.shape[-1]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) * d**-0.5
    causal = jnp.tril(jnp.ones((t, t), bool))
    scores = jnp.where(causal, scores, -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(jnp.float32)).astype(q.dtype)


def causal_attention_macs_per_position(seq_len: int, width: int) -> float:
    """Multiply-adds per position of causal attention over windows of ``seq_len``: scores and values,
    each ``width`` (= heads x head dim) wide, over the (T+1)/2 keys a position sees on average.
    This is the work a causal flash kernel does; the non-causal convention (PaLM's 12·L·d·T FLOPs)
    counts twice as much."""
    return (seq_len + 1) / 2 * 2 * width
