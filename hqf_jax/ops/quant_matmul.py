"""Pure-jnp references of the quantized matmul kernels in pallas_kernels/quant/ (quant_matmul, gather_matmul).

Weights are in the (R, C) matrix view of quant_codecs: R output features, C = K input features, so a Flax
kernel (K, N) is the matrix W^T and y = x @ kernel = x @ W^T. Activations are bf16; the dequantized weight is
rounded to bf16 and the products accumulate in float32, which is what the dot/fma kernels do. The GEMV form
(mode "vec") keeps decoded values in float32 and applies group scales once per group, so it differs from this
reference by at most the bf16 rounding of the weight (the tests' tolerance allows it).
"""

from __future__ import annotations

import jax.numpy as jnp


def dequant_matmul_ref(x: jnp.ndarray, w_matrix: jnp.ndarray) -> jnp.ndarray:
    """y (B, R) = x (B, C) @ w_matrix (R, C)^T with w rounded to bf16, f32 accumulation, result in x.dtype."""
    w = w_matrix.astype(jnp.bfloat16)
    y = jnp.dot(x.astype(jnp.bfloat16), w.T, preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


def gather_matmul_ref(x: jnp.ndarray, s_sorted: jnp.ndarray, perm: jnp.ndarray) -> jnp.ndarray:
    """Row-sorted gather matmul y[b, i] = sum_j S[i, j] * x[b, P[i, j]] (S rounded to bf16, f32 accumulation).

    With S[i] the sorted row i of W and P[i] its argsort this equals x @ W^T: the sorted form keeps the function.
    """
    s = s_sorted.astype(jnp.bfloat16).astype(jnp.float32)
    xg = x.astype(jnp.float32)[:, perm.astype(jnp.int32)]  # (B, R, C)
    return jnp.einsum("brc,rc->br", xg, s).astype(x.dtype)


def bf16_matmul(x: jnp.ndarray, w_matrix_bf16: jnp.ndarray) -> jnp.ndarray:
    """The XLA baseline the benchmark compares against: bf16 x (B, C) times a bf16 (R, C) weight."""
    return jnp.dot(x, w_matrix_bf16.T, preferred_element_type=jnp.float32).astype(x.dtype)
