"""Small-batch GEMV with the decode layer's neighbours fused in, one Pallas (Triton backend) kernel each:

    out = [residual +] epilogue( [RMSNorm](x) @ W )       x (B, K), W (K, N), B small (1..64)

- ``norm_scale`` given: every program recomputes the RMS of its rows of x in float32 (a first pass over K;
  K is d_model, <= 2048) and normalises each x chunk as it streams its column tile of W;
- ``glu=True``: W is [W_gate | W_up] (K, 2F) as hqf_jax.infer.fused.fuse_weights concatenates it; each program
  streams the gate tile and the matching up tile (columns n and F + n) and writes silu(a) * u, (B, F);
- ``residual`` given: the epilogue adds it (the residual stream x + y @ W_o, x + h @ W_down).

Forms. B < 16: rows unrolled (block_b = B, no padding), per row a float32 (block_k, block_n) accumulator of
broadcast products, reduced once after the K loop (no tensor core: tl.dot needs 16 rows). B >= 16: row tiles
of 16..64 (masked), jnp.dot on tensor cores with x cast to W's dtype. Every block is a power of two; ragged K,
N and B edges are masked loads/stores, so no operand is padded or reshaped. ``reference`` is the jnp form.
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
DOT_MIN_B = 16  # tl.dot needs >= 16 rows
ACC_BUDGET = 8192  # float32 accumulator elements per program in the broadcast form (64 registers at 4 warps)


@dataclasses.dataclass(frozen=True)
class GemvBlocks:
    block_b: int
    block_k: int
    block_n: int
    num_warps: int = 4


def _p2floor(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def pick_blocks(b: int, k: int, n: int, glu: bool = False) -> GemvBlocks:
    """The heuristic table: about 128+ column tiles (an H200 has 132 SMs) of 16..64 columns; block_k so that the
    per-row accumulators fill ACC_BUDGET; tensor-core form from 16 rows (tiles of 16/32/64 rows)."""
    kp = max(16, pl.next_power_of_2(k))
    if b >= DOT_MIN_B:
        bb = min(64, pl.next_power_of_2(b))
        bn = 64 if n >= 4096 else (32 if n >= 1024 else 16)
        return GemvBlocks(bb, min(64, kp), bn, 4)
    bn = _clamp(_p2floor(n // 128), 16, 64)
    accs = b * (2 if glu else 1)
    bk = _clamp(_p2floor(ACC_BUDGET // (accs * bn)), 16, 256)
    return GemvBlocks(b, min(bk, kp), bn, 4)


def reference(x, w, norm_scale=None, eps: float = 1e-6, residual=None, glu: bool = False, out_dtype=None):
    """The jnp form (float32 arithmetic, rounded once to out_dtype)."""
    f = x.astype(F32)
    if norm_scale is not None:
        f = f * lax.rsqrt(jnp.mean(f * f, -1, keepdims=True) + eps) * norm_scale.astype(F32)
    y = jnp.dot(f, w.astype(F32), precision="highest")
    if glu:
        half = w.shape[1] // 2
        y = jax.nn.silu(y[:, :half]) * y[:, half:]
    if residual is not None:
        y = y + residual.astype(F32)
    return y.astype(out_dtype or (residual.dtype if residual is not None else x.dtype))


def _load(ref, mask):
    return plgpu.load(ref, mask=mask, other=None if mask is None else 0.0)


def _outer(rows, cols, shape):
    """The 2-D mask of a row mask and a column mask, either None when that edge is not ragged."""
    if rows is None or cols is None:
        return None if rows is None and cols is None else jnp.broadcast_to(
            rows[:, None] if cols is None else cols[None, :], shape)
    return rows[:, None] & cols[None, :]


def _kernel(*refs, b: int, k: int, n: int, blocks: GemvBlocks, norm: bool, res: bool, glu: bool, eps: float):
    x_ref, w_ref, *rest = refs
    s_ref = rest.pop(0) if norm else None
    r_ref = rest.pop(0) if res else None
    (o_ref,) = rest
    bb, bk, bn = blocks.block_b, blocks.block_k, blocks.block_n
    dot = bb >= DOT_MIN_B
    n0 = pl.program_id(0) * bn
    r0 = pl.program_id(1) * bb  # 0 in the broadcast form (one row tile); traced, so rows index as arrays
    nk = pl.cdiv(k, bk)
    ks = lambda t: pl.ds(t * bk, bk)
    # masks only on ragged edges (None otherwise: unmasked loads vectorise without proof of alignment)
    cmask = None if n % bn == 0 else n0 + jnp.arange(bn) < n
    kmask = lambda t: None if k % bk == 0 else t * bk + jnp.arange(bk) < k
    rmask = None if not dot or b % bb == 0 else r0 + jnp.arange(bb) < b

    def load_x(t):  # (bb, bk) in the tensor-core form, else a list of bb rows (bk,)
        if dot:
            return _load(x_ref.at[pl.ds(r0, bb), ks(t)], _outer(rmask, kmask(t), (bb, bk))).astype(F32)
        return [_load(x_ref.at[r0 + r, ks(t)], kmask(t)).astype(F32) for r in range(bb)]

    if norm:
        def sq(t, acc):
            xs = load_x(t)
            if dot:
                return acc + jnp.sum(xs * xs, axis=1)
            return tuple(a + jnp.sum(v * v) for a, v in zip(acc, xs))

        ss = lax.fori_loop(0, nk, sq, jnp.zeros((bb,), F32) if dot else (jnp.zeros((), F32),) * bb)
        inv = lax.rsqrt(ss / k + eps) if dot else [lax.rsqrt(v / k + eps) for v in ss]

    def step(t, acc):
        wm = _outer(kmask(t), cmask, (bk, bn))
        tiles = [_load(w_ref.at[ks(t), pl.ds(n0 + h * n, bn)], wm) for h in range(1 + glu)]  # glu: gate, up
        xs = load_x(t)
        if norm:
            s = _load(s_ref.at[ks(t)], kmask(t)).astype(F32)
            xs = xs * inv[:, None] * s[None, :] if dot else [v * i * s for v, i in zip(xs, inv)]
        if dot:
            xw = xs.astype(w_ref.dtype)
            return tuple(a + jnp.dot(xw, w, preferred_element_type=F32) for a, w in zip(acc, tiles))
        tiles = [w.astype(F32) for w in tiles]
        per_acc = [(v, w) for v in xs for w in tiles]  # accumulators: row 0 (gate, up), row 1 ...
        return tuple(a + v[:, None] * w for a, (v, w) in zip(acc, per_acc))

    shape = (bb, bn) if dot else (bk, bn)
    acc = lax.fori_loop(0, nk, step, (jnp.zeros(shape, F32),) * ((1 + glu) * (1 if dot else bb)))
    if not dot:  # one reduction per accumulator, after the loop
        acc = tuple(jnp.sum(a, axis=0) for a in acc)
    per = 1 + glu
    outs = [acc[j * per] * jax.nn.sigmoid(acc[j * per]) * acc[j * per + 1] if glu else acc[j]
            for j in range(len(acc) // per)]
    if dot:
        m = _outer(rmask, cmask, (bb, bn))
        y = outs[0]
        if res:
            y = y + _load(r_ref.at[pl.ds(r0, bb), pl.ds(n0, bn)], m).astype(F32)
        plgpu.store(o_ref.at[pl.ds(r0, bb), pl.ds(n0, bn)], y.astype(o_ref.dtype), mask=m)
        return
    for r, y in enumerate(outs):
        if res:
            y = y + _load(r_ref.at[r0 + r, pl.ds(n0, bn)], cmask).astype(F32)
        plgpu.store(o_ref.at[r0 + r, pl.ds(n0, bn)], y.astype(o_ref.dtype), mask=cmask)


@functools.partial(jax.jit, static_argnames=("eps", "glu", "out_dtype", "blocks", "interpret"))
def decode_gemv(x, w, norm_scale=None, residual=None, *, eps: float = 1e-6, glu: bool = False, out_dtype=None,
                blocks: GemvBlocks | None = None, interpret: bool = False):
    """x (B, K), W (K, N) (glu: [W_gate | W_up], (K, 2F)) -> (B, N or F) in out_dtype (default: the residual's
    dtype, else x's). norm_scale (K,) applies RMSNorm to x first; residual (B, N) is added in the epilogue."""
    b, k = x.shape
    if w.shape[0] != k or (glu and w.shape[1] % 2):
        raise ValueError(f"decode_gemv: x {x.shape} and W {w.shape} do not match (glu={glu})")
    n = w.shape[1] // 2 if glu else w.shape[1]
    if residual is not None and residual.shape != (b, n):
        raise ValueError(f"decode_gemv: residual {residual.shape} is not {(b, n)}")
    blocks = blocks or pick_blocks(b, k, n, glu)
    if blocks.block_b < DOT_MIN_B and blocks.block_b != b:
        raise ValueError(f"the broadcast form takes block_b = B (got {blocks.block_b} for B={b}); "
                         f"block_b >= {DOT_MIN_B} takes the tensor-core form")
    out_dtype = jnp.dtype(out_dtype or (residual.dtype if residual is not None else x.dtype))
    args = [x, w] + ([norm_scale] if norm_scale is not None else []) + ([residual] if residual is not None else [])
    kern = functools.partial(_kernel, b=b, k=k, n=n, blocks=blocks, norm=norm_scale is not None,
                             res=residual is not None, glu=glu, eps=float(eps))
    name = "decode_gemv" + ("_norm" if norm_scale is not None else "") + ("_glu" if glu else "") + (
        "_res" if residual is not None else "")
    return pl.pallas_call(
        kern,
        grid=(pl.cdiv(n, blocks.block_n), pl.cdiv(b, blocks.block_b)),
        out_shape=jax.ShapeDtypeStruct((b, n), out_dtype),
        compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=2),
        interpret=interpret,
        name=name,
    )(*args)
