"""Backward pass of the Pallas chunkwise retention (see ``pallas_kernels.retention``; shared pieces in
``retention_common``).

Per row n let rho_n = sum_m R'[n, m] be the row sum without the 1/sqrt(c_n) factor r_n, num_n the
numerator likewise, a_n = rho_n r_n and m_n = max(|a_n|, 1), so o_n = num_n r_n / m_n. Then

    d num_n = do_n r_n / m_n                                         (the numerator's cotangent)
    d rho_n = -(do_n . o_n) sign(a_n) r_n / m_n   if |a_n| > 1, else 0 (the row sum's cotangent)
    d r_n   = (do_n . o_n) / r_n                  if |a_n| <= 1, else 0

and the rest is the backward of unnormalised retention with values [v, 1] and output cotangents
[d num, d rho]: a reverse state kernel (dS_n, dz_n: cotangents of the state after every chunk)
and one parallel kernel per chunk for dq, dk, dv. Every gamma enters as gamma^(p_x - p_y)
between a "query side" x at position p_x (q_n at n, the returned state at t - 1) and a "key
side" y (k_m at m, the incoming state at -1), so

    d log gamma = sum_n n q_n.dq_n - sum_m m k_m.dk_m + (t - 1) <S_T, dS_T> + <S_0, dS_0>  (+ z terms)

with dq, dk the kernels' gradients; the r_n dependence on gamma goes back through the jnp
``_row_norm`` by JAX's own autodiff.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.retention_common import (
    F32, _Cfg, _decay_matrix, _dot, _params, _positions, _state_call, _state_weights, _states,
)

# ----------------------------------------------------------------------------- reverse state kernel


def _dstate_kernel(lg_ref, q_ref, g_ref, gr_ref, dht_ref, dzt_ref, dhs_ref, dzs_ref, dh0_ref, dz0_ref, *, cfg: _Cfg):
    c = cfg.chunk
    lg = lg_ref[pl.program_id(2) % cfg.num_heads]
    carry_w = jnp.exp(lg * (_positions(c) + 1.0))  # gamma^(i+1)

    def step(n, carry, decay):
        dh, dz = carry
        dhs_ref[n] = dh.astype(dhs_ref.dtype)  # cotangent of the state after chunk n
        dzs_ref[n] = dz
        qb = q_ref[pl.ds(n * c, c), :]
        gb = g_ref[pl.ds(n * c, c), :]
        grb = gr_ref[pl.ds(n * c, c)]
        qw = qb.astype(F32) * carry_w[:, None]
        dh = dh * decay + _dot(qw.astype(qb.dtype), gb, trans_a=True)
        dz = dz * decay + jnp.sum(qw * grb[:, None], axis=0)
        return dh, dz

    carry = step(cfg.n_chunks - 1, (dht_ref[...], dzt_ref[...]), jnp.exp(lg * cfg.last_len))
    last = cfg.n_chunks - 2
    dh, dz = lax.fori_loop(0, cfg.n_chunks - 1, lambda j, cr: step(last - j, cr, jnp.exp(lg * c)), carry)
    dh0_ref[...] = dh
    dz0_ref[...] = dz


def _dstates(cfg: _Cfg, lg, q, gnum, grs, dht, dzt):
    """dhs (BH, N, Dk, Dv) q's dtype, dzs (BH, NV, N, Dk) f32, dS_0 (BH, Dk, Dv) f32, dz_0 (BH, NV, Dk) f32."""
    return _state_call(_dstate_kernel, cfg, lg, q, gnum, (grs,), dht, dzt, dtype=q.dtype, name="retention_dstates")


# ----------------------------------------------------------------------------- dq, dk, dv kernel


def _grad_kernel(
    lg_ref, q_ref, k_ref, v_ref, g_ref, gr_ref, h_ref, z_ref, dh_ref, dz_ref,
    dq_ref, dk_ref, dv_ref, qdq_ref, kdk_ref, *, cfg: _Cfg, block_v: int,
):  # fmt: skip
    c = cfg.chunk
    n = pl.program_id(0)
    lg = lg_ref[pl.program_id(1) % cfg.num_heads]
    q, k = q_ref[...], k_ref[...]
    gr = gr_ref[...]
    dt = q.dtype
    dmat = _decay_matrix(lg, c) * cfg.scale
    carry_w = jnp.exp(lg * (_positions(c) + 1.0))
    # real steps in this chunk, by arithmetic: jnp.where(pred, python_int, python_int) mis-lowers on
    # the Triton backend (the int literals take the predicate's i1 type: 64 -> false -> 0, so w was 0
    # on the GPU while interpret mode was exact); see docs/retention_kernel.md, "GPU bug".
    is_last = (n == cfg.n_chunks - 1).astype(F32)
    length = c + (cfg.last_len - c) * is_last
    w = _state_weights(lg, c, length) * cfg.scale  # weight of step j in the state after this chunk
    a = (_dot(q, k, trans_b=True) * dmat).astype(dt)
    kw = (k.astype(F32) * w[:, None]).astype(dt)

    # Dv in blocks (static loop): dv per block; dA, dq's and dk's state terms accumulate over blocks
    da = jnp.zeros((c, c), F32)
    dq_state = jnp.zeros(q.shape, F32)
    dk_state = jnp.zeros(k.shape, F32)
    for j in range(v_ref.shape[-1] // block_v):
        cols = pl.ds(j * block_v, block_v)
        v, g = v_ref[:, cols], g_ref[:, cols]
        h, dh = h_ref[:, cols], dh_ref[:, cols]
        da += _dot(g, v, trans_b=True)
        dq_state += _dot(g, h, trans_b=True)
        dk_state += _dot(v, dh, trans_b=True)
        dv_ref[:, cols] = (_dot(a, g, trans_a=True) + _dot(kw, dh)).astype(dv_ref.dtype)
    da = ((da + gr[:, None]) * dmat).astype(dt)
    dq = _dot(da, k) + (dq_state + gr[:, None] * z_ref[...][None, :]) * carry_w[:, None]
    dk = _dot(da, q, trans_a=True) + (dk_state + dz_ref[...][None, :]) * w[:, None]
    dq_ref[...] = dq.astype(dq_ref.dtype)
    dk_ref[...] = dk.astype(dk_ref.dtype)
    qdq_ref[...] = jnp.sum(q.astype(F32) * dq, axis=1)
    kdk_ref[...] = jnp.sum(k.astype(F32) * dk, axis=1)


def _grads(cfg: _Cfg, lg, q, k, v, gnum, grs, hs, zs, dhs, dzs):
    bh, tp, dk = q.shape
    dv = v.shape[-1]
    c, tl = cfg.chunk, cfg.tiling
    row_k = pl.BlockSpec((None, c, dk), lambda n, b: (b, n, 0))
    row_v = pl.BlockSpec((None, c, dv), lambda n, b: (b, n, 0))
    row = pl.BlockSpec((None, c), lambda n, b: (b, n))
    mat = pl.BlockSpec((None, None, dk, dv), lambda n, b: (b, n, 0, 0))
    vec = pl.BlockSpec((None, None, None, dk), lambda n, b: (b, 0, n, 0))
    return pl.pallas_call(
        functools.partial(_grad_kernel, cfg=cfg, block_v=min(tl.block_v_grad, dv)),
        grid=(cfg.n_chunks, bh),
        in_specs=[pl.BlockSpec(lg.shape, lambda n, b: (0,)), row_k, row_k, row_v, row_v, row, mat, vec, mat, vec],
        out_specs=[row_k, row_k, row_v, row, row],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct(k.shape, k.dtype),
            jax.ShapeDtypeStruct(v.shape, v.dtype),
            jax.ShapeDtypeStruct((bh, tp), F32),
            jax.ShapeDtypeStruct((bh, tp), F32),
        ],
        compiler_params=_params(tl.warps_grad, tl.stages_grad),
        interpret=cfg.interpret,
        name="retention_grads",
    )(lg, q, k, v, gnum, grs, hs, zs, dhs, dzs)


# ----------------------------------------------------------------------------- the VJP


def backward(cfg: _Cfg, res, do, dht, dzt):
    """Cotangents of (q, k, v, log gammas, rnorm, S_0, z_0) given those of (o, S_T, z_T)."""
    q, k, v, lg, rnorm, h0, z0, o, rs, ht, zt, states = res
    bh, tp, _ = q.shape
    nh = cfg.num_heads
    nb = bh // nh
    rn = jnp.broadcast_to(rnorm[None], (nb, nh, tp)).reshape(bh, tp)
    a = rs * rn
    big = jnp.abs(a) > 1.0
    sc = rn / jnp.maximum(jnp.abs(a), 1.0)
    do_o = jnp.sum(do * o, axis=-1)
    gnum = (do * sc[..., None]).astype(q.dtype)
    grs = jnp.where(big, -do_o * jnp.sign(a) * sc, 0.0)
    drn = jnp.where(big, 0.0, do_o / rn).reshape(nb, nh, tp).sum(0)

    hs, zs = states if states is not None else _states(cfg, lg, k, v, h0, z0)[:2]
    dhs, dzs, dh0, dz0 = _dstates(cfg, lg, q, gnum, grs, dht, dzt)
    dq, dk, dv, qdq, kdk = _grads(cfg, lg, q, k, v, gnum, grs, hs, zs, dhs, dzs)
    dz0 = dz0[:, 0]

    pos = jnp.arange(tp, dtype=F32)
    exps = jnp.sum((qdq - kdk) * pos, axis=-1)  # elementwise: an f32 matmul here may run in TF32 on GPU
    exps += (cfg.t - 1.0) * (jnp.sum(dht * ht, axis=(1, 2)) + jnp.sum(dzt * zt, axis=1))
    exps += jnp.sum(dh0 * h0, axis=(1, 2)) + jnp.sum(dz0 * z0, axis=1)
    dlg = exps.reshape(nb, nh).sum(0)
    return dq, dk, dv, dlg, drn, dh0, dz0
