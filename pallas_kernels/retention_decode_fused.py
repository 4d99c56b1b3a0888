"""One Pallas (Triton backend) kernel for the whole middle of a decode layer: rotary/xPos on q and k, the
recurrent retention step (S <- gamma S + k^T v, z <- gamma z + k, o = (q S) r / max(|q . z| r, 1)), the
per-head group norm and the swish gate, reading q, k, v and the gate straight from the projection output
h = x [Wq | Wk | Wv | Wg] (no slicing copies). The jnp reference is ``hqf_jax.infer.fused.mixer_xla``.

One program per (row, head): it holds the head's whole state (Dk x Dv float32; 128 x 256 for the 125M and
1B byte LMs) so the group-norm statistics need no second pass, and writes the state back in place (aliased).
Needs Dk/2 and Dv powers of two >= 16 and 2 qk_dim divisible by Dv (the block index of v and the gate in h).

``v_split=s`` (s > 1) splits each head's state into s column blocks of Dv/s, one program each: at batch 1 the
125M LM has only 6 (row, head) programs, each streaming 128 KB of state in and out on one SM (the decode-step
profile measured 8.2 µs a call on an H200). Each program updates its block of S, recomputes z (Dk floats: every
block's program writes the same values to a separate, unaliased z) and writes its block of the un-normalized
readout; the group norm and the gate, which need the whole head, run after it as one XLA fusion.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from hqf_jax.ops.retention import RetentionState, head_norm_gate

F32 = jnp.float32


class FusedDecodeError(ValueError):
    """A shape the kernel cannot take; the message says what to change."""


def _pow2(n: int) -> int:
    return max(16, pl.next_power_of_2(n))


def _step(i, g_ref, r_ref, q_ref, k_ref, v_ref, cos_ref, sin_ref, xs_ref, s_ref, z_ref, s_out, z_out, half: int):
    """Program i's (row, head) step on the v columns it holds: rotate q, k; S <- gamma S + k^T v and z <- gamma z +
    k, written to s_out / z_out; returns the un-normalized readout (q S) r / max(|q . z| r, 1)."""
    g, r = g_ref[i], r_ref[i]
    cos, sin, xs = cos_ref[...], sin_ref[...], xs_ref[...]
    lo, hi = pl.ds(0, half), pl.ds(half, half)
    q1, q2 = q_ref[lo].astype(F32), q_ref[hi].astype(F32)
    k1, k2 = k_ref[lo].astype(F32), k_ref[hi].astype(F32)
    scale = (2 * half) ** -0.5
    rq1, rq2 = (q1 * cos - q2 * sin) * xs, (q2 * cos + q1 * sin) * xs
    rk1, rk2 = (k1 * cos - k2 * sin) / xs * scale, (k2 * cos + k1 * sin) / xs * scale
    v = v_ref[...].astype(F32)  # (Dv,) or its column block
    s1 = s_ref[lo, :] * g + rk1[:, None] * v[None, :]
    s2 = s_ref[hi, :] * g + rk2[:, None] * v[None, :]
    z1 = z_ref[lo] * g + rk1
    z2 = z_ref[hi] * g + rk2
    s_out[lo, :] = s1
    s_out[hi, :] = s2
    z_out[lo] = z1
    z_out[hi] = z2
    num = jnp.sum(rq1[:, None] * s1, axis=0) + jnp.sum(rq2[:, None] * s2, axis=0)
    rowsum = jnp.sum(rq1 * z1) + jnp.sum(rq2 * z2)
    return num * r / jnp.maximum(jnp.abs(rowsum * r), 1.0)


def _kernel(g_ref, r_ref, q_ref, k_ref, v_ref, a_ref, cos_ref, sin_ref, xs_ref, gn_ref, s_ref, z_ref,
            o_ref, s_out, z_out, *, half: int, eps: float):
    o = _step(pl.program_id(0), g_ref, r_ref, q_ref, k_ref, v_ref, cos_ref, sin_ref, xs_ref, s_ref, z_ref, s_out,
              z_out, half)
    n = o.shape[0]
    mean = jnp.sum(o) / n
    var = jnp.maximum(jnp.sum(o * o) / n - mean * mean, 0.0)
    y = (o - mean) * (jax.lax.rsqrt(var + eps) * gn_ref[...].astype(F32))
    a = a_ref[...].astype(F32)
    o_ref[...] = (y * (a * jax.nn.sigmoid(a))).astype(o_ref.dtype)


def _kernel_split(g_ref, r_ref, q_ref, k_ref, v_ref, cos_ref, sin_ref, xs_ref, s_ref, z_ref, o_ref, s_out, z_out,
                  *, half: int, v_split: int):
    """One (row, head, column block): the block's state update and its un-normalized readout."""
    o_ref[...] = _step(pl.program_id(0) // v_split, g_ref, r_ref, q_ref, k_ref, v_ref, cos_ref, sin_ref, xs_ref,
                       s_ref, z_ref, s_out, z_out, half)


def _row_head_scalars(h, state: RetentionState, gammas, rnorm, num_heads: int):
    """(programs' (row, head) count n, n padded to a power of two, gamma and decay-row norm per (row, head)
    padded to it); checks that h holds the state's q, k, v and gate."""
    b, hh, dk, dv = state.kv.shape
    if hh != num_heads or h.shape[1] != 2 * hh * dk + 2 * hh * dv:
        raise FusedDecodeError(f"h {h.shape} does not match the state {state.kv.shape} (q, k, v, gate)")
    n = b * hh
    npad = _pow2(n)
    pad = lambda x: jnp.pad(x.reshape(n), (0, npad - n))  # noqa: E731
    return n, npad, pad(jnp.broadcast_to(gammas.astype(F32)[None], (b, hh))), pad(rnorm.astype(F32))


def auto_v_split(batch: int, num_heads: int, dv: int, programs: int = 64) -> int:
    """The column split that brings batch x heads programs up to about ``programs`` (a power of two, blocks of
    at least 16 columns); 1 once batch x heads reaches half of it."""
    s = 1
    while batch * num_heads * s * 2 <= programs and dv // (s * 2) >= 16:
        s *= 2
    return s


@functools.partial(jax.jit, static_argnames=("num_heads", "eps", "interpret", "num_warps", "v_split"))
def fused_mixer(h, gn_scale, gammas, rnorm, tables, state: RetentionState, num_heads: int, eps: float, *,
                interpret: bool = False, num_warps: int = 8, v_split: int = 1):
    """h (B, 2qk+2v) projection output, gn_scale (v,), gammas (H,), rnorm (B, H), tables (cos, sin, xpos
    scale) each (B, Dk/2), state S (B, H, Dk, Dv) z (B, H, Dk) -> gated group-normed output (B, v) in h's
    dtype and the state after the step. v_split > 1: the state in column blocks (module docstring)."""
    if v_split > 1:
        return _mixer_split(h, gn_scale, gammas, rnorm, tables, state, num_heads, eps, interpret, num_warps,
                            v_split)
    b, hh, dk, dv = state.kv.shape
    half = dk // 2
    if half != _pow2(half) or dv != _pow2(dv) or (2 * hh * dk) % dv:
        raise FusedDecodeError(f"the fused decode kernel needs Dk/2 and Dv powers of two >= 16 and Dv dividing "
                               f"2 qk_dim (Dk={dk}, Dv={dv}, H={hh}); use the 'xla' fused step")
    n, npad, gv, rv = _row_head_scalars(h, state, gammas, rnorm, num_heads)
    vbase, abase = 2 * hh * dk // dv, 2 * hh * dk // dv + hh
    row = lambda i: i // hh
    vec = lambda size, base, blk: pl.BlockSpec((None, size), lambda i: (row(i), base + i % hh) if blk else (row(i), 0))
    cos, sin, xs = (t.astype(F32) for t in tables)
    o, s, z = pl.pallas_call(
        functools.partial(_kernel, half=half, eps=eps),
        grid=(n,),
        in_specs=[
            pl.BlockSpec((npad,), lambda i: (0,)),
            pl.BlockSpec((npad,), lambda i: (0,)),
            vec(dk, 0, True), vec(dk, hh, True), vec(dv, vbase, True), vec(dv, abase, True),
            vec(half, 0, False), vec(half, 0, False), vec(half, 0, False),
            pl.BlockSpec((dv,), lambda i: (i % hh,)),
            pl.BlockSpec((None, dk, dv), lambda i: (i, 0, 0)),
            pl.BlockSpec((None, dk), lambda i: (i, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, dv), lambda i: (row(i), i % hh)),
            pl.BlockSpec((None, dk, dv), lambda i: (i, 0, 0)),
            pl.BlockSpec((None, dk), lambda i: (i, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, hh * dv), h.dtype),
            jax.ShapeDtypeStruct((n, dk, dv), F32),
            jax.ShapeDtypeStruct((n, dk), F32),
        ],
        input_output_aliases={10: 1, 11: 2},
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="retention_decode_fused",
    )(gv, rv, h, h, h, h, cos, sin, xs, gn_scale, state.kv.astype(F32).reshape(n, dk, dv),
      state.ksum.astype(F32).reshape(n, dk))
    return o, RetentionState(s.reshape(b, hh, dk, dv), z.reshape(b, hh, dk), state.offset + 1)


def _mixer_split(h, gn_scale, gammas, rnorm, tables, state: RetentionState, num_heads: int, eps: float,
                 interpret: bool, num_warps: int, v_split: int):
    b, hh, dk, dv = state.kv.shape
    half, dvb = dk // 2, dv // v_split
    if half != _pow2(half) or dvb != _pow2(dvb) or dv % v_split or (2 * hh * dk) % dvb:
        raise FusedDecodeError(f"v_split={v_split}: the split kernel needs Dk/2 and Dv/v_split powers of two >= 16 "
                               f"(Dk={dk}, Dv={dv}, H={hh}); use a smaller v_split or 1")
    n, npad, gv, rv = _row_head_scalars(h, state, gammas, rnorm, num_heads)
    head, blk = (lambda p: p // v_split), (lambda p: p % v_split)
    row = lambda p: head(p) // hh
    qk_spec = lambda base: pl.BlockSpec((None, dk), lambda p: (row(p), base + head(p) % hh))
    vbase = 2 * hh * dk // dvb
    tab = pl.BlockSpec((None, half), lambda p: (row(p), 0))
    cos, sin, xs = (t.astype(F32) for t in tables)
    o, s, z = pl.pallas_call(
        functools.partial(_kernel_split, half=half, v_split=v_split),
        grid=(n * v_split,),
        in_specs=[
            pl.BlockSpec((npad,), lambda p: (0,)),
            pl.BlockSpec((npad,), lambda p: (0,)),
            qk_spec(0), qk_spec(hh),
            pl.BlockSpec((None, dvb), lambda p: (row(p), vbase + (head(p) % hh) * v_split + blk(p))),
            tab, tab, tab,
            pl.BlockSpec((None, dk, dvb), lambda p: (head(p), 0, blk(p))),
            pl.BlockSpec((None, dk), lambda p: (head(p), 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, dvb), lambda p: (row(p), (head(p) % hh) * v_split + blk(p))),
            pl.BlockSpec((None, dk, dvb), lambda p: (head(p), 0, blk(p))),
            pl.BlockSpec((None, dk), lambda p: (head(p), 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, hh * dv), F32),
            jax.ShapeDtypeStruct((n, dk, dv), F32),
            jax.ShapeDtypeStruct((n, dk), F32),
        ],
        input_output_aliases={8: 1},  # S only: z is read whole by every block's program, so it is not aliased
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="retention_decode_split",
    )(gv, rv, h, h, h, cos, sin, xs, state.kv.astype(F32).reshape(n, dk, dv), state.ksum.astype(F32).reshape(n, dk))
    y = head_norm_gate(o.reshape(b, hh, dv), gn_scale, h[:, 2 * hh * dk + hh * dv:], eps)
    return y.astype(h.dtype), RetentionState(s.reshape(b, hh, dk, dv), z.reshape(b, hh, dk), state.offset + 1)
