"""What the forward and backward Pallas retention kernels share (pallas_kernels/retention.py and
retention_bwd.py import it; it imports neither): the tiling and the static call config, the in-kernel helpers,
the state kernel, which the backward re-runs when the forward states were not saved, and the state call that it
and the backward's reverse state kernel share.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Tile sizes and launch parameters (clamped to the padded head sizes)."""

    block_k_state: int = 64  # Dk tile of the (reverse) state kernels
    block_v_state: int = 64  # Dv tile of the (reverse) state kernels
    warps_state: int = 4
    stages_state: int = 2
    block_v_out: int = 64  # Dv tile of the output kernel
    warps_out: int = 4
    stages_out: int = 2
    block_v_grad: int = 64  # Dv tile of the dq/dk/dv kernel (one chunk per program, a static loop over Dv tiles)
    warps_grad: int = 8
    stages_grad: int = 2
    save_states: bool = False  # keep the forward states for the backward instead of recomputing (fla recomputes)


@dataclasses.dataclass(frozen=True)
class _Cfg:
    t: int  # real length
    chunk: int
    n_chunks: int
    num_heads: int
    scale: float
    tiling: Tiling
    interpret: bool

    @property
    def last_len(self) -> int:  # real steps in the last chunk
        return self.t - (self.n_chunks - 1) * self.chunk


# ----------------------------------------------------------------------------- in-kernel helpers


def _dot(a, b, *, trans_a=False, trans_b=False):
    """Matmul with float32 accumulation; exact float32 (no TF32) when both inputs are float32."""
    exact = a.dtype == F32 and b.dtype == F32
    return plgpu.dot(a, b, trans_a=trans_a, trans_b=trans_b, precision=lax.Precision.HIGHEST if exact else None)


def _positions(c: int):
    return jnp.arange(c).astype(F32)


def _decay_matrix(lg, c: int):
    """D[i, j] = gamma^(i - j) for j <= i, else 0 (lg = log gamma, a scalar)."""
    i = _positions(c)
    diff = i[:, None] - i[None, :]
    return jnp.where(diff >= 0, jnp.exp(lg * jnp.maximum(diff, 0.0)), 0.0)


def _state_weights(lg, c: int, length):
    """gamma^(L - 1 - j) for the j < L real steps of a chunk of L steps, else 0."""
    i = _positions(c)
    return jnp.where(i < length, jnp.exp(lg * jnp.maximum(length - 1.0 - i, 0.0)), 0.0)


def _params(warps: int, stages: int):
    return plgpu.CompilerParams(num_warps=warps, num_stages=stages)


# ----------------------------------------------------------------------------- state kernel


def _state_kernel(lg_ref, k_ref, v_ref, h0_ref, z0_ref, hs_ref, zs_ref, ht_ref, zt_ref, *, cfg: _Cfg):
    c = cfg.chunk
    lg = lg_ref[pl.program_id(2) % cfg.num_heads]

    def step(n, carry, w, decay):
        h, z = carry
        hs_ref[n] = h.astype(hs_ref.dtype)
        zs_ref[n] = z
        kb = k_ref[pl.ds(n * c, c), :]
        vb = v_ref[pl.ds(n * c, c), :]
        kw = kb.astype(F32) * w[:, None]
        h = h * decay + _dot(kw.astype(kb.dtype), vb, trans_a=True)
        z = z * decay + jnp.sum(kw, axis=0)
        return h, z

    w_full = _state_weights(lg, c, float(c)) * cfg.scale
    carry = (h0_ref[...].astype(F32), z0_ref[...].astype(F32))
    carry = lax.fori_loop(0, cfg.n_chunks - 1, lambda n, cr: step(n, cr, w_full, jnp.exp(lg * c)), carry)
    w_last = _state_weights(lg, c, float(cfg.last_len)) * cfg.scale
    h, z = step(cfg.n_chunks - 1, carry, w_last, jnp.exp(lg * cfg.last_len))
    ht_ref[...] = h
    zt_ref[...] = z


def _state_call(kernel, cfg: _Cfg, lg, x, y, rows: tuple, h, z, *, dtype, name: str):
    """Run a (reverse) state kernel over the grid (Dk tiles, Dv tiles, BH) on the inputs lg, x (BH, T, Dk),
    y (BH, T, Dv), each of `rows` (BH, T), h (BH, Dk, Dv), z (BH, Dk). Outputs: the per-chunk states
    (BH, N, Dk, Dv) in `dtype`, their z's (BH, NV, N, Dk) f32, and the last state (BH, Dk, Dv) and z (BH, NV, Dk)
    in f32."""
    bh, tp, dk = x.shape
    dv = y.shape[-1]
    n, tl = cfg.n_chunks, cfg.tiling
    bk, bv = min(tl.block_k_state, dk), min(tl.block_v_state, dv)
    nk, nv = dk // bk, dv // bv
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg),
        grid=(nk, nv, bh),
        in_specs=[
            pl.BlockSpec(lg.shape, lambda ik, iv, b: (0,)),
            pl.BlockSpec((None, tp, bk), lambda ik, iv, b: (b, 0, ik)),
            pl.BlockSpec((None, tp, bv), lambda ik, iv, b: (b, 0, iv)),
            *[pl.BlockSpec((None, tp), lambda ik, iv, b: (b, 0)) for _ in rows],
            pl.BlockSpec((None, bk, bv), lambda ik, iv, b: (b, ik, iv)),
            pl.BlockSpec((None, bk), lambda ik, iv, b: (b, ik)),
        ],
        out_specs=[
            pl.BlockSpec((None, n, bk, bv), lambda ik, iv, b: (b, 0, ik, iv)),
            pl.BlockSpec((None, None, n, bk), lambda ik, iv, b: (b, iv, 0, ik)),
            pl.BlockSpec((None, bk, bv), lambda ik, iv, b: (b, ik, iv)),
            pl.BlockSpec((None, None, bk), lambda ik, iv, b: (b, iv, ik)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((bh, n, dk, dv), dtype),
            jax.ShapeDtypeStruct((bh, nv, n, dk), F32),
            jax.ShapeDtypeStruct((bh, dk, dv), F32),
            jax.ShapeDtypeStruct((bh, nv, dk), F32),
        ],
        compiler_params=_params(tl.warps_state, tl.stages_state),
        interpret=cfg.interpret,
        name=name,
    )(lg, x, y, *rows, h, z)


def _states(cfg: _Cfg, lg, k, v, h0, z0):
    """hs (BH, N, Dk, Dv) input dtype, zs (BH, NV, N, Dk) f32, hT (BH, Dk, Dv) f32, zT (BH, NV, Dk) f32."""
    return _state_call(_state_kernel, cfg, lg, k, v, (), h0, z0, dtype=k.dtype, name="retention_states")
