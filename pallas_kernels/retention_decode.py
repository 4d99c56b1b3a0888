"""The recurrent retention step as one Pallas (Triton backend) kernel: the decode step of the inference engine.

Computes exactly ``hqf_jax.ops.retention.retention_step`` (the jnp reference, which stays; the engine picks
with ``decode_impl``):

    S <- gamma S + k^T v,   z <- gamma z + k,   o = (q S) r / max(|q . z| r, 1)

with k scaled by 1/sqrt(Dk) and r = 1/sqrt(c_n) the decay-row norm at each row's own position. One program
per (batch x head, Dv tile): it reads its state tile once, writes it back in place (the state buffers are
aliased to the outputs, so no second copy of S is allocated), and reads q, k and z whole (Dk is small).
All arithmetic is float32 whatever the input dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from hqf_jax.ops.retention import RetentionState, row_norm

F32 = jnp.float32


class DecodeKernelError(ValueError):
    """A call the kernel cannot take; the message says what to change."""


def _pow2(n: int) -> int:
    return max(16, pl.next_power_of_2(n))


def _kernel(g_ref, r_ref, q_ref, k_ref, v_ref, s_ref, z_ref, o_ref, s_out, z_out):
    bh = pl.program_id(0)
    g = g_ref[bh]
    r = r_ref[bh]
    q = q_ref[...].astype(F32)  # (Dk,)
    k = k_ref[...].astype(F32)
    v = v_ref[...].astype(F32)  # (BV,)
    s = s_ref[...] * g + k[:, None] * v[None, :]  # (Dk, BV)
    z = z_ref[...] * g + k
    num = jnp.sum(q[:, None] * s, axis=0)
    rowsum = jnp.sum(q * z)
    o_ref[...] = num * r / jnp.maximum(jnp.abs(rowsum * r), 1.0)
    s_out[...] = s

    @pl.when(pl.program_id(1) == 0)
    def _():
        z_out[...] = z


@functools.partial(jax.jit, static_argnames=("block_v", "interpret"))
def retention_decode_step(q, k, v, gammas, state: RetentionState, *, block_v: int = 64, interpret: bool = False):
    """q, k (B, H, Dk), v (B, H, Dv), state S (B, H, Dk, Dv) z (B, H, Dk), offset () or (B,)
    -> o (B, H, Dv) float32 and the state after the step; same signature as ``retention_step``."""
    b, h, dk = q.shape
    dv = v.shape[-1]
    if k.shape != q.shape or v.shape[:2] != (b, h) or state.kv.shape != (b, h, dk, dv):
        raise DecodeKernelError(f"decode step expects q, k (B,H,Dk), v (B,H,Dv), S (B,H,Dk,Dv); got {q.shape}, "
                                f"{k.shape}, {v.shape}, {state.kv.shape}")
    if dk != _pow2(dk) or dv % min(block_v, dv) or min(block_v, dv) != _pow2(min(block_v, dv)):
        raise DecodeKernelError(f"the decode kernel needs Dk a power of two >= 16 (got {dk}) and a Dv tile that is "
                                f"a power of two >= 16 dividing Dv={dv} (block_v={block_v}); use decode_impl='jnp'")
    bv = min(block_v, dv)
    n = b * h
    npad = _pow2(n)  # Triton blocks are powers of two: the per-row scalars are read from padded vectors
    g = gammas.astype(F32)
    rn = jnp.broadcast_to(row_norm(jnp.asarray(state.offset)[..., None], g)[..., 0], (b, h)).reshape(n)
    gv = jnp.broadcast_to(g[None], (b, h)).reshape(n)
    pad = lambda x: jnp.pad(x, (0, npad - n))
    ks = (k.astype(F32) * dk**-0.5).reshape(n, dk)
    o, s, z = pl.pallas_call(
        _kernel,
        grid=(n, dv // bv),
        in_specs=[
            pl.BlockSpec((npad,), lambda i, j: (0,)),
            pl.BlockSpec((npad,), lambda i, j: (0,)),
            pl.BlockSpec((None, dk), lambda i, j: (i, 0)),
            pl.BlockSpec((None, dk), lambda i, j: (i, 0)),
            pl.BlockSpec((None, bv), lambda i, j: (i, j)),
            pl.BlockSpec((None, dk, bv), lambda i, j: (i, 0, j)),
            pl.BlockSpec((None, dk), lambda i, j: (i, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, bv), lambda i, j: (i, j)),
            pl.BlockSpec((None, dk, bv), lambda i, j: (i, 0, j)),
            pl.BlockSpec((None, dk), lambda i, j: (i, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((n, dv), F32),
            jax.ShapeDtypeStruct((n, dk, dv), F32),
            jax.ShapeDtypeStruct((n, dk), F32),
        ],
        input_output_aliases={5: 1, 6: 2},
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
        name="retention_decode",
    )(pad(gv), pad(rn), q.reshape(n, dk), ks, v.reshape(n, dv), state.kv.astype(F32).reshape(n, dk, dv),
      state.ksum.astype(F32).reshape(n, dk))
    new = RetentionState(s.reshape(b, h, dk, dv), z.reshape(b, h, dk), state.offset + 1)
    return o.reshape(b, h, dv), new
