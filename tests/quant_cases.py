"""Shared builders for the quantized-kernel tests: a random weight quantized by a spec with its input, and the
bf16-rounding check of a kernel's product against the dequantize -> bf16 -> matmul reference."""

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax import quant as Q
from hqf_jax.ops.quant_matmul import dequant_matmul_ref
from hqf_jax.quant.qtensor import dequantize_matrix


def quant_case(spec, k, n, b, seed=0):
    """(x (b, k) bf16, q): a N(0, 0.05) (k, n) weight quantized by spec."""
    kw, kx = jax.random.split(jax.random.key(seed))
    q = Q.quantize(jax.random.normal(kw, (k, n)) * 0.05, spec)
    return jax.random.normal(kx, (b, k)).astype(jnp.bfloat16), q


def check_product(y, x, q):
    """|y - ref| within bf16 rounding of the weights and of the output: 2^-7 (|x| @ |w|^T + |ref|) + 1e-6."""
    wm = dequantize_matrix(q)
    ref = np.asarray(dequant_matmul_ref(x, wm), np.float32)
    y = np.asarray(y, np.float32)
    scale = np.abs(np.asarray(x, np.float32)) @ np.abs(np.asarray(wm, np.float32)).T
    assert y.shape == ref.shape
    assert np.all(np.abs(y - ref) <= 2.0**-7 * (scale + np.abs(ref)) + 1e-6), float(np.max(np.abs(y - ref)))


def mosaic_abstract(spec, k, n, plan=None, shuffle=False):
    """The Hopper form's MosaicWeight of a (k, n) weight quantized by spec, shapes only (no quantization work)."""
    from hqf_jax.quant.config import parse_method
    from hqf_jax.quant.linear import placeholder
    from pallas_kernels.quant.mosaic_layout import prepare_mosaic

    return jax.eval_shape(lambda pw: prepare_mosaic(pw, plan, shuffle), placeholder(parse_method(spec), n, k))
