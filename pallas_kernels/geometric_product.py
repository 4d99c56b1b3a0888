"""Pallas (GPU / Triton backend) kernels for the Cl(3,1) geometric product and the fused context chain.

Reference: ``hqf_jax.ops.clifford.geometric_product`` / ``product_chain`` (pure jnp, selectable
beside these kernels; a kernel never replaces it). Every kernel takes ``interpret`` so it runs on
CPU in interpret mode; tests compare against the reference there.

The product is memory-bound (256 multiply-adds per 192 bytes moved in float32), so the layout
decides the speed:

* ``layout="soa"``: multivectors stored blade-major, arrays (16, N). Each program loads 16
  contiguous row segments of ``block`` elements per operand, does the 256 multiply-adds as
  unrolled vector FMAs (signs and partners are Python constants taken from the generated
  Cayley table) and writes 16 contiguous rows. Fully coalesced; the intended fast path.
* ``layout="aos"``: the usual (N, 16) layout. The program loads columns ``ref[:, k]`` (strided
  by 16 elements, but the 16 column loads of a block touch the same cache lines) and writes
  columns back. No transpose is ever materialised.

Chains (the ordered product of a context, T factors) keep the 16 running coefficients in
registers across a ``fori_loop`` over T, so the context is read once and only the result is
written. ``gather_chain`` also fuses the embedding gather: it reads token ids (T, N) and a
blade-major table (16, V), the store path's memory-optimal form.

Block sizes must be powers of two (Triton); N is padded to a multiple of ``block`` when needed
(a copy: pass multiples of ``block`` on the hot path).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from hqf_jax.errors import HqfError
from hqf_jax.ops.clifford import NUM_BLADES, PARTNER, SIGN_BY_OUT

_TERMS = tuple(
    tuple((i, int(PARTNER[i, k]), float(SIGN_BY_OUT[i, k])) for i in range(NUM_BLADES)) for k in range(NUM_BLADES)
)


class KernelShapeError(HqfError, ValueError):
    """Bad kernel inputs; the message names the expected shapes."""


def _compiler_params(num_warps: int | None, num_stages: int | None):
    try:
        from jax.experimental.pallas import triton as plt

        return plt.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    except ImportError:  # pragma: no cover - triton extras absent
        return None


def _product_rows(a, b):
    """16 coefficient vectors times 16 coefficient vectors -> 16 vectors (unrolled FMAs)."""
    out = []
    for k in range(NUM_BLADES):
        acc = None
        for i, j, s in _TERMS[k]:
            term = a[i] * b[j]
            if acc is None:
                acc = term if s > 0 else -term
            else:
                acc = acc + term if s > 0 else acc - term
        out.append(acc)
    return out


def _check_block(block: int):
    if block < 1 or block & (block - 1):
        raise KernelShapeError(f"block must be a power of two (Triton), got {block}")


def _pad_to(x, axis: int, block: int):
    n = x.shape[axis]
    pad = (-n) % block
    if pad:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, pad)
        x = jnp.pad(x, widths)
    return x, n


# ---------------------------------------------------------------- pairwise product
def _gp_soa_kernel(a_ref, b_ref, o_ref):
    a = [a_ref[k, :].astype(jnp.float32) for k in range(NUM_BLADES)]
    b = [b_ref[k, :].astype(jnp.float32) for k in range(NUM_BLADES)]
    for k, v in enumerate(_product_rows(a, b)):
        o_ref[k, :] = v.astype(o_ref.dtype)


def _gp_aos_kernel(a_ref, b_ref, o_ref):
    a = [a_ref[:, k].astype(jnp.float32) for k in range(NUM_BLADES)]
    b = [b_ref[:, k].astype(jnp.float32) for k in range(NUM_BLADES)]
    for k, v in enumerate(_product_rows(a, b)):
        o_ref[:, k] = v.astype(o_ref.dtype)


@partial(jax.jit, static_argnames=("layout", "block", "interpret", "num_warps", "num_stages"))
def geometric_product_pallas(
    a: jnp.ndarray,
    b: jnp.ndarray,
    *,
    layout: str = "soa",
    block: int = 1024,
    interpret: bool = False,
    num_warps: int | None = 4,
    num_stages: int | None = None,
) -> jnp.ndarray:
    """Batched a * b. ``soa``: a, b (16, N) -> (16, N); ``aos``: a, b (N, 16) -> (N, 16)."""
    _check_block(block)
    if a.shape != b.shape or a.ndim != 2:
        raise KernelShapeError(f"a and b must be equal 2-D shapes, got {a.shape} and {b.shape}")
    if layout == "soa":
        if a.shape[0] != NUM_BLADES:
            raise KernelShapeError(f"soa layout wants (16, N) arrays, got {a.shape}; use layout='aos' for (N, 16)")
        axis, spec = 1, pl.BlockSpec((NUM_BLADES, block), lambda i: (0, i))
        kernel = _gp_soa_kernel
    elif layout == "aos":
        if a.shape[1] != NUM_BLADES:
            raise KernelShapeError(f"aos layout wants (N, 16) arrays, got {a.shape}; use layout='soa' for (16, N)")
        axis, spec = 0, pl.BlockSpec((block, NUM_BLADES), lambda i: (i, 0))
        kernel = _gp_aos_kernel
    else:
        raise KernelShapeError(f"layout must be 'soa' or 'aos', got {layout!r}")
    a, n = _pad_to(a, axis, block)
    b, _ = _pad_to(b, axis, block)
    grid = (a.shape[axis] // block,)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(a.shape, a.dtype),
        grid=grid,
        in_specs=[spec, spec],
        out_specs=spec,
        interpret=interpret,
        compiler_params=None if interpret else _compiler_params(num_warps, num_stages),
        name=f"cl31_gp_{layout}",
    )(a, b)
    return jax.lax.slice_in_dim(out, 0, n, axis=axis)


# ---------------------------------------------------------------- fused chains
def _chain_soa_kernel(x_ref, o_ref, *, steps: int):
    first = tuple(x_ref[0, k, :].astype(jnp.float32) for k in range(NUM_BLADES))

    def body(t, acc):
        nxt = [x_ref[t, k, :].astype(jnp.float32) for k in range(NUM_BLADES)]
        return tuple(_product_rows(list(acc), nxt))

    acc = jax.lax.fori_loop(1, steps, body, first) if steps > 1 else first
    for k in range(NUM_BLADES):
        o_ref[k, :] = acc[k].astype(o_ref.dtype)


def _chain_aos_kernel(x_ref, o_ref, *, steps: int):
    first = tuple(x_ref[:, 0, k].astype(jnp.float32) for k in range(NUM_BLADES))

    def body(t, acc):
        nxt = [x_ref[:, t, k].astype(jnp.float32) for k in range(NUM_BLADES)]
        return tuple(_product_rows(list(acc), nxt))

    acc = jax.lax.fori_loop(1, steps, body, first) if steps > 1 else first
    for k in range(NUM_BLADES):
        o_ref[:, k] = acc[k].astype(o_ref.dtype)


@partial(jax.jit, static_argnames=("layout", "block", "interpret", "num_warps", "num_stages"))
def product_chain_pallas(
    x: jnp.ndarray,
    *,
    layout: str = "soa",
    block: int = 512,
    interpret: bool = False,
    num_warps: int | None = 4,
    num_stages: int | None = None,
) -> jnp.ndarray:
    """Ordered product of T factors. ``soa``: x (T, 16, N) -> (16, N); ``aos``: x (N, T, 16) -> (N, 16)."""
    _check_block(block)
    if x.ndim != 3:
        raise KernelShapeError(f"chain wants a 3-D array ((T, 16, N) soa or (N, T, 16) aos), got {x.shape}")
    if layout == "soa":
        if x.shape[1] != NUM_BLADES:
            raise KernelShapeError(f"soa chain wants (T, 16, N), got {x.shape}")
        steps = x.shape[0]
        x, n = _pad_to(x, 2, block)
        in_spec = pl.BlockSpec((steps, NUM_BLADES, block), lambda i: (0, 0, i))
        out_spec = pl.BlockSpec((NUM_BLADES, block), lambda i: (0, i))
        out_shape = jax.ShapeDtypeStruct((NUM_BLADES, x.shape[2]), x.dtype)
        kernel, grid, axis = partial(_chain_soa_kernel, steps=steps), (x.shape[2] // block,), 1
    elif layout == "aos":
        if x.shape[2] != NUM_BLADES:
            raise KernelShapeError(f"aos chain wants (N, T, 16), got {x.shape}")
        steps = x.shape[1]
        x, n = _pad_to(x, 0, block)
        in_spec = pl.BlockSpec((block, steps, NUM_BLADES), lambda i: (i, 0, 0))
        out_spec = pl.BlockSpec((block, NUM_BLADES), lambda i: (i, 0))
        out_shape = jax.ShapeDtypeStruct((x.shape[0], NUM_BLADES), x.dtype)
        kernel, grid, axis = partial(_chain_aos_kernel, steps=steps), (x.shape[0] // block,), 0
    else:
        raise KernelShapeError(f"layout must be 'soa' or 'aos', got {layout!r}")
    out = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=[in_spec],
        out_specs=out_spec,
        interpret=interpret,
        compiler_params=None if interpret else _compiler_params(num_warps, num_stages),
        name=f"cl31_chain_{layout}",
    )(x)
    return jax.lax.slice_in_dim(out, 0, n, axis=axis)


def _gather_chain_kernel(ids_ref, table_ref, o_ref, *, steps: int):
    def row(t):
        ids = ids_ref[t, :]
        return [table_ref[k, ids].astype(jnp.float32) for k in range(NUM_BLADES)]

    first = tuple(row(0))

    def body(t, acc):
        return tuple(_product_rows(list(acc), row(t)))

    acc = jax.lax.fori_loop(1, steps, body, first) if steps > 1 else first
    for k in range(NUM_BLADES):
        o_ref[k, :] = acc[k].astype(o_ref.dtype)


@partial(jax.jit, static_argnames=("block", "interpret", "num_warps", "num_stages"))
def gather_chain_pallas(
    table: jnp.ndarray,
    ids: jnp.ndarray,
    *,
    block: int = 512,
    interpret: bool = False,
    num_warps: int | None = 4,
    num_stages: int | None = None,
) -> jnp.ndarray:
    """Fused gather + chain: table (16, V) blade-major, ids (T, N) int32 -> (16, N) context products."""
    _check_block(block)
    if table.ndim != 2 or table.shape[0] != NUM_BLADES:
        raise KernelShapeError(f"table must be blade-major (16, V), got {table.shape}")
    if ids.ndim != 2:
        raise KernelShapeError(f"ids must be (T, N) token ids, got {ids.shape}")
    steps = ids.shape[0]
    ids, n = _pad_to(ids.astype(jnp.int32), 1, block)
    out = pl.pallas_call(
        partial(_gather_chain_kernel, steps=steps),
        out_shape=jax.ShapeDtypeStruct((NUM_BLADES, ids.shape[1]), table.dtype),
        grid=(ids.shape[1] // block,),
        in_specs=[
            pl.BlockSpec((steps, block), lambda i: (0, i)),
            pl.BlockSpec(table.shape, lambda i: (0, 0)),
        ],
        out_specs=pl.BlockSpec((NUM_BLADES, block), lambda i: (0, i)),
        interpret=interpret,
        compiler_params=None if interpret else _compiler_params(num_warps, num_stages),
        name="cl31_gather_chain",
    )(ids, table)
    return out[:, :n]
