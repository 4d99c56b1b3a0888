"""Chunkwise multi-scale retention as Pallas (Triton backend) kernels, forward and backward.

Computes exactly the function of ``hqf_jax.ops.retention`` (its docstring has the formula) with
the signature and return of ``retention_chunkwise``; that jnp function stays the reference and
the model chooses between the two by config. Design after fla's ``chunk_retention`` (common
``chunk_fwd_h`` / ``chunk_fwd_o``), plus the row-sum terms that the retention normalisation needs:

forward (two kernels)
  state kernel   grid (Dk/BK, Dv/BV, B*H), a loop over the chunks: writes the state before every
                 chunk, S_n (Dk, Dv) in the input dtype and the key sum z_n (Dk,) in float32,
                 and the state after the last real step.
  output kernel  grid (Dv/BV, chunks, B*H), fully parallel: per chunk
                 A = (Q K^T) * scale * D,  rowsum = A 1 + gamma^(i+1) Q z_n,
                 num = A V + gamma^(i+1) Q S_n,  o = num * r / max(|rowsum * r|, 1).
backward (``retention_bwd``): the normalisation is folded into two cotangents per row
(one for the numerator, one for the row sum), then the same structure in reverse: a reverse
state kernel for dS_n, dz_n and one parallel kernel per chunk for dq, dk, dv.

Any T (zero padding to a multiple of the chunk; the state is taken after the last real step)
and any head size (zero padding to a power of two >= 16, which Triton's tiles need). Matmul
inputs stay in the input dtype (bfloat16 runs the tensor cores), accumulation is float32.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.sharding import PartitionSpec as P

from hqf_jax.ops.retention import RetentionState, check_inputs as _check, init_state, row_norm as _row_norm
from pallas_kernels.retention_bwd import backward
from pallas_kernels.retention_common import F32, Tiling, _Cfg, _decay_matrix, _dot, _params, _positions, _states

_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


class RetentionKernelError(ValueError):
    """A call the kernel cannot take; the message says what to change."""


def _pow2_at_least_16(n: int) -> int:
    return max(16, pl.next_power_of_2(n))


# ----------------------------------------------------------------------------- output kernel


def _out_kernel(lg_ref, q_ref, k_ref, v_ref, h_ref, z_ref, rn_ref, o_ref, rs_ref, *, cfg: _Cfg):
    c = cfg.chunk
    lg = lg_ref[pl.program_id(2) % cfg.num_heads]
    q, k, v = q_ref[...], k_ref[...], v_ref[...]
    carry = jnp.exp(lg * (_positions(c) + 1.0))  # gamma^(i+1): decay of the incoming state
    a = _dot(q, k, trans_b=True) * (_decay_matrix(lg, c) * cfg.scale)
    rowsum = jnp.sum(a, axis=1) + jnp.sum(q.astype(F32) * z_ref[...][None, :], axis=1) * carry
    num = _dot(a.astype(v.dtype), v) + _dot(q, h_ref[...]) * carry[:, None]
    rn = rn_ref[...]
    o_ref[...] = num * (rn / jnp.maximum(jnp.abs(rowsum * rn), 1.0))[:, None]
    rs_ref[...] = rowsum


def _outputs(cfg: _Cfg, lg, q, k, v, hs, zs, rnorm):
    """o (BH, Tp, Dv) f32 and the row sums (BH, NV, Tp) f32."""
    bh, tp, dk = q.shape
    dv = v.shape[-1]
    c, nh, tl = cfg.chunk, cfg.num_heads, cfg.tiling
    bv = min(tl.block_v_out, dv)
    nv = dv // bv
    return pl.pallas_call(
        functools.partial(_out_kernel, cfg=cfg),
        grid=(nv, cfg.n_chunks, bh),
        in_specs=[
            pl.BlockSpec(lg.shape, lambda iv, n, b: (0,)),
            pl.BlockSpec((None, c, dk), lambda iv, n, b: (b, n, 0)),
            pl.BlockSpec((None, c, dk), lambda iv, n, b: (b, n, 0)),
            pl.BlockSpec((None, c, bv), lambda iv, n, b: (b, n, iv)),
            pl.BlockSpec((None, None, dk, bv), lambda iv, n, b: (b, n, 0, iv)),
            pl.BlockSpec((None, None, None, dk), lambda iv, n, b: (b, 0, n, 0)),
            pl.BlockSpec((None, c), lambda iv, n, b: (b % nh, n)),
        ],
        out_specs=[
            pl.BlockSpec((None, c, bv), lambda iv, n, b: (b, n, iv)),
            pl.BlockSpec((None, None, c), lambda iv, n, b: (b, iv, n)),
        ],
        out_shape=[jax.ShapeDtypeStruct((bh, tp, dv), F32), jax.ShapeDtypeStruct((bh, nv, tp), F32)],
        compiler_params=_params(tl.warps_out, tl.stages_out),
        interpret=cfg.interpret,
        name="retention_outputs",
    )(lg, q, k, v, hs, zs, rnorm)


# ----------------------------------------------------------------------------- custom VJP


def _forward(cfg, q, k, v, lg, rnorm, h0, z0):
    hs, zs, ht, zt = _states(cfg, lg, k, v, h0, z0)
    o, rs = _outputs(cfg, lg, q, k, v, hs, zs, rnorm)
    return o, rs[:, 0], ht, zt[:, 0], hs, zs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _core(cfg, q, k, v, lg, rnorm, h0, z0):
    o, _, ht, zt, _, _ = _forward(cfg, q, k, v, lg, rnorm, h0, z0)
    return o, ht, zt


def _core_fwd(cfg, q, k, v, lg, rnorm, h0, z0):
    o, rs, ht, zt, hs, zs = _forward(cfg, q, k, v, lg, rnorm, h0, z0)
    states = (hs, zs) if cfg.tiling.save_states else None
    return (o, ht, zt), (q, k, v, lg, rnorm, h0, z0, o, rs, ht, zt, states)


def _core_bwd(cfg, res, cts):
    return backward(cfg, res, *cts)


_core.defvjp(_core_fwd, _core_bwd)


# ----------------------------------------------------------------------------- public entry point


def chunk_retention(
    q,
    k,
    v,
    gammas,
    state: RetentionState | None = None,
    chunk_size: int = 64,
    interpret: bool = False,
    *,
    tiling: Tiling | None = None,
):
    """Pallas chunkwise retention; same arguments and result as ``retention_chunkwise``.

    q, k (B, H, T, Dk); v (B, H, T, Dv); gammas (H,); optional incoming ``RetentionState``.
    Returns o (B, H, T, Dv) float32 and the state after the last step. Differentiable in
    q, k, v, gammas and the incoming state. ``interpret=True`` runs the kernels on CPU.
    """
    _check(q, k, v, gammas)
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    if any(x.dtype not in _DTYPES for x in (q, k, v)):
        got = ", ".join(str(x.dtype) for x in (q, k, v))
        raise RetentionKernelError(f"chunk_retention takes float32, bfloat16 or float16 q/k/v; got {got}: cast them first")
    dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    c = int(chunk_size)
    if c < 16 or c & (c - 1):
        raise RetentionKernelError(f"chunk_size must be a power of two >= 16 (Triton tiles); got {chunk_size}: use 64")
    state = state if state is not None else init_state(b, h, dk, dv)
    tiling = tiling or Tiling()
    pad_t = (-t) % c
    tp = t + pad_t
    dkp, dvp = _pow2_at_least_16(dk), _pow2_at_least_16(dv)
    cfg = _Cfg(t=t, chunk=c, n_chunks=tp // c, num_heads=h, scale=float(dk) ** -0.5, tiling=tiling, interpret=interpret)

    def prep(x, d, dp):
        x = jnp.pad(x.astype(dtype), ((0, 0), (0, 0), (0, pad_t), (0, dp - d)))
        return x.reshape(b * h, tp, dp)

    g = gammas.astype(F32)
    rnorm = _row_norm(state.offset + jnp.arange(tp), g)  # (H, Tp): 1/sqrt(c_n), the reference's own numbers
    h0 = jnp.pad(state.kv.astype(F32), ((0, 0), (0, 0), (0, dkp - dk), (0, dvp - dv))).reshape(b * h, dkp, dvp)
    z0 = jnp.pad(state.ksum.astype(F32), ((0, 0), (0, 0), (0, dkp - dk))).reshape(b * h, dkp)
    o, ht, zt = _core(cfg, prep(q, dk, dkp), prep(k, dk, dkp), prep(v, dv, dvp), jnp.log(g), rnorm, h0, z0)
    o = o.reshape(b, h, tp, dvp)[:, :, :t, :dv]
    kv = ht.reshape(b, h, dkp, dvp)[:, :, :dk, :dv]
    ksum = zt.reshape(b, h, dkp)[:, :, :dk]
    return o, RetentionState(kv, ksum, state.offset + t)


def sharded_chunk_retention(q, k, v, gammas, chunk_size: int = 64, interpret: bool = False, *,
                            batch_axes: tuple[str, ...] = (), head_axis: str | None = None,
                            tiling: Tiling | None = None):
    """``chunk_retention`` from a fresh state inside a sharded step: one kernel call per device on its own
    rows and heads (``jax.shard_map`` over the mesh in context), so XLA never gathers q/k/v to run the
    custom call whole. ``batch_axes`` split B (their product must divide it, else B stays whole), ``head_axis``
    splits H (when its size divides H); other mesh axes see replicated work. Without a mesh of more than one
    device it is plain ``chunk_retention``. Same result and state as the unsharded call."""
    mesh = jax.sharding.get_abstract_mesh()
    call = functools.partial(chunk_retention, chunk_size=chunk_size, interpret=interpret, tiling=tiling)
    if mesh.empty or mesh.size == 1:
        return call(q, k, v, gammas)
    b, h = q.shape[:2]
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    rows = tuple(a for a in batch_axes if sizes.get(a, 1) > 1)
    rows = rows if rows and b % math.prod(sizes[a] for a in rows) == 0 else None
    heads = head_axis if head_axis and sizes.get(head_axis, 1) > 1 and h % sizes[head_axis] == 0 else None
    if rows is None and heads is None:
        return call(q, k, v, gammas)
    x = P(rows, heads)
    state = RetentionState(x, x, P())
    return jax.shard_map(lambda q, k, v, g: call(q, k, v, g), mesh=mesh, in_specs=(x, x, x, P(heads)),
                         out_specs=(x, state), check_vma=False)(q, k, v, gammas)
