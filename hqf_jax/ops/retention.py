"""Multi-scale retention (Sun et al., 2023, "Retentive Network") in three forms.

All three forms compute the same function, written here once:

    R[n, m] = (q_n . k_m) / sqrt(d_k) * gamma^(n - m) / sqrt(c_n)      for m <= n, else 0
    c_n     = sum_{i <= n} gamma^(n - i) = (1 - gamma^(n + 1)) / (1 - gamma)
    o_n     = sum_m R[n, m] v_m / max(|sum_m R[n, m]|, 1)

n and m are absolute positions (``offset`` is the position of the first input step).
The ``1/sqrt(c_n)`` factor is the paper's decay-mask normalisation (each row of D
divided by the square root of its sum) and the ``max(|.|, 1)`` denominator is the
paper's retention-score normalisation (Sec. 2.4 of the paper). Both keep the three forms
exactly equal, because each is a function of quantities the recurrent state carries:

    S_n = gamma S_{n-1} + k_n^T v_n        (B, H, Dk, Dv)   the key-value memory
    z_n = gamma z_{n-1} + k_n              (B, H, Dk)       the key sum, for the row sums

Shapes: q, k (B, H, T, Dk); v (B, H, T, Dv); gammas (H,). Every form takes an optional
incoming ``RetentionState`` and returns ``(o, state)``: o (B, H, T, Dv) in float32 and the
state after the last step, so a prompt can be prefilled in parallel or chunkwise form and
continued step by step in the recurrent form.

Positional rotation (xPos or RoPE) is applied to q and k by the caller with
``rotate_qk``; it is a function of absolute positions as well.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

MODES = ("parallel", "chunkwise", "recurrent")
POSITION_KINDS = ("rope", "xpos", "none")


class RetentionState(NamedTuple):
    """State after position offset - 1: S (B, H, Dk, Dv), z (B, H, Dk), offset () int32, or (B,) int32 when
    the rows of a batch sit at different positions (the inference engine's batches of unequal prompts)."""

    kv: jax.Array
    ksum: jax.Array
    offset: jax.Array


def default_gammas(num_heads: int, base: float = -5.0) -> jax.Array:
    """Per-head decays gamma_h = 1 - 2^(base - h) (the paper's default: base = -5)."""
    return 1.0 - jnp.exp2(base - jnp.arange(num_heads, dtype=jnp.float32))


def init_state(batch: int, heads: int, dk: int, dv: int) -> RetentionState:
    return RetentionState(
        kv=jnp.zeros((batch, heads, dk, dv), jnp.float32),
        ksum=jnp.zeros((batch, heads, dk), jnp.float32),
        offset=jnp.zeros((), jnp.int32),
    )


# ----------------------------------------------------------------------------- positions


def rotary_angles(positions: jax.Array, dim: int, theta: float = 10000.0) -> jax.Array:
    """Angles (..., T, dim/2) of rotate-half RoPE at the given absolute positions (..., T)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    return positions.astype(jnp.float32)[..., None] * inv_freq


def _rotate(x: jax.Array, angles: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rotate_qk(
    q: jax.Array,
    k: jax.Array,
    positions: jax.Array,
    kind: str = "xpos",
    theta: float = 10000.0,
    xpos_scale_base: float = 512.0,
) -> tuple[jax.Array, jax.Array]:
    """Apply RoPE or xPos (Sun et al., 2022) to q, k (..., T, D) at absolute ``positions`` (T,) (or any shape
    that broadcasts against q's leading axes, e.g. (B, 1, T) for per-row positions).

    xPos multiplies the rotated q by zeta^(n / scale_base) and k by zeta^(-n / scale_base),
    zeta_i = (i / (D/2) + 0.4) / 1.4, so q_n . k_m decays smoothly with n - m.
    """
    if kind not in POSITION_KINDS:
        raise ValueError(f"position kind {kind!r} is not one of {POSITION_KINDS}")
    if kind == "none":
        return q, k
    dim = q.shape[-1]
    angles = rotary_angles(positions, dim, theta)
    qf, kf = _rotate(q.astype(jnp.float32), angles), _rotate(k.astype(jnp.float32), angles)
    if kind == "xpos":
        zeta = (jnp.arange(0, dim, 2, dtype=jnp.float32) + 0.4 * dim) / (1.4 * dim)
        power = positions.astype(jnp.float32)[..., None] / xpos_scale_base
        scale = jnp.concatenate([zeta**power] * 2, axis=-1)  # (..., T, D)
        qf, kf = qf * scale, kf / scale
    return qf.astype(q.dtype), kf.astype(k.dtype)


# ----------------------------------------------------------------------------- helpers


def row_norm(positions: jax.Array, gammas: jax.Array) -> jax.Array:
    """1 / sqrt(c_n) for positions (T,) -> (H, T), or per-row positions (B, T) -> (B, H, T);
    c_n = sum_{i<=n} gamma^i, clamped at 1.

    Written as -expm1((n+1) log1p(-(1-gamma))) / (1-gamma) so heads with gamma near 1 keep full
    float32 precision (the direct (1 - gamma^(n+1)) / (1 - gamma) loses digits to cancellation),
    and gamma == 1 (no decay, e.g. 1 - 2^-30 rounded in float32) gives c_n = n + 1, not 0/0.
    """
    n1 = positions.astype(jnp.float32)[..., None, :] + 1.0
    eps = 1.0 - gammas.astype(jnp.float32)[:, None]  # exact in float32 for gamma in [0.5, 1]
    safe = jnp.where(eps > 0, eps, 1.0)
    c = jnp.where(eps > 0, -jnp.expm1(n1 * jnp.log1p(-safe)) / safe, n1)
    return jax.lax.rsqrt(jnp.maximum(c, 1.0))


def head_norm_gate(o: jax.Array, gn_scale: jax.Array, gate: jax.Array, eps: float) -> jax.Array:
    """The decode step's tail: per-head group norm of the readout o (B, H, Dv) float32 (statistics over Dv, scale
    gn_scale (H Dv,)) times the swish gate (B, H Dv) -> (B, H Dv) float32."""
    b, nh, dv = o.shape
    mean = o.mean(-1, keepdims=True)
    var = jnp.maximum((o * o).mean(-1, keepdims=True) - mean * mean, 0.0)
    y = (o - mean) * (jax.lax.rsqrt(var + eps) * gn_scale.astype(jnp.float32).reshape(nh, dv))
    gate = gate.astype(jnp.float32)
    return y.reshape(b, nh * dv) * jax.nn.sigmoid(gate) * gate


def _finish(num: jax.Array, rowsum: jax.Array, rnorm: jax.Array) -> jax.Array:
    """Apply the decay-row normalisation and the |row sum| normalisation; rnorm (H, T) or (B, H, T)."""
    rnorm = rnorm[..., None] if rnorm.ndim == 3 else rnorm[None, :, :, None]
    denom = jnp.maximum(jnp.abs(rowsum[..., None] * rnorm), 1.0)
    return num * rnorm / denom


def _einsum(spec: str, *xs: jax.Array) -> jax.Array:
    return jnp.einsum(spec, *xs, preferred_element_type=jnp.float32)


def _positions(offset: jax.Array, t: int) -> jax.Array:
    """Absolute positions of t steps after ``offset``: (T,) for a scalar offset, (B, T) for per-row offsets."""
    return jnp.asarray(offset)[..., None] + jnp.arange(t) if jnp.ndim(offset) else offset + jnp.arange(t)


def check_inputs(q, k, v, gammas):
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"retention expects q, k (B,H,T,Dk) and v (B,H,T,Dv); got {q.shape}, {k.shape}, {v.shape}")
    if gammas.shape != (q.shape[1],):
        raise ValueError(f"gammas must have shape (H,) = ({q.shape[1]},); got {gammas.shape}")


# ----------------------------------------------------------------------------- the three forms


def retention_parallel(q, k, v, gammas, state: RetentionState | None = None):
    b, h, t, dk = q.shape
    state = state if state is not None else init_state(b, h, dk, v.shape[-1])
    g = gammas.astype(jnp.float32)
    k = k * (dk**-0.5)
    idx = jnp.arange(t)
    diff = (idx[:, None] - idx[None, :]).astype(jnp.float32)
    causal = diff >= 0
    decay = jnp.where(causal[None], g[:, None, None] ** jnp.where(causal, diff, 0.0)[None], 0.0)  # (H,T,T)
    scores = _einsum("bhtd,bhsd->bhts", q, k) * decay[None]
    # contribution of the incoming state: gamma^(i+1) * q_i S
    carry = g[:, None] ** (idx[None, :] + 1.0)  # (H, T)
    num = _einsum("bhts,bhsv->bhtv", scores, v) + _einsum("bhtd,bhdv->bhtv", q, state.kv) * carry[None, :, :, None]
    rowsum = scores.sum(-1) + _einsum("bhtd,bhd->bht", q, state.ksum) * carry[None]
    positions = _positions(state.offset, t)
    o = _finish(num, rowsum, row_norm(positions, g))
    # state after the last position
    w = g[:, None] ** (t - 1.0 - idx[None, :])  # (H, T)
    gt = (g**t)[None, :, None]
    kv = state.kv * gt[..., None] + _einsum("bhtd,bhtv->bhdv", k * w[None, :, :, None], v)
    ksum = state.ksum * gt + _einsum("bhtd,ht->bhd", k, w)
    return o, RetentionState(kv, ksum, state.offset + t)


def retention_step(q, k, v, gammas, state: RetentionState):
    """One recurrent step without a scan (the decode step): q, k (B, H, Dk), v (B, H, Dv) at position
    state.offset -> o (B, H, Dv) float32 and the state after it. The reference of the Pallas decode kernel."""
    g = gammas.astype(jnp.float32)
    k = k * (q.shape[-1] ** -0.5)
    kv = state.kv * g[None, :, None, None] + _einsum("bhd,bhv->bhdv", k, v)
    ksum = state.ksum * g[None, :, None] + k.astype(jnp.float32)
    num = _einsum("bhd,bhdv->bhv", q, kv)
    rowsum = _einsum("bhd,bhd->bh", q, ksum)
    o = _finish(num[:, :, None], rowsum[:, :, None], row_norm(state.offset[..., None], g))[:, :, 0]
    return o, RetentionState(kv, ksum, state.offset + 1)


def retention_recurrent(q, k, v, gammas, state: RetentionState | None = None):
    """Step-by-step form: O(1) state per step; for T > 1 it scans the steps."""
    b, h, t, dk = q.shape
    state = state if state is not None else init_state(b, h, dk, v.shape[-1])
    g = gammas.astype(jnp.float32)
    k = k * (dk**-0.5)

    def step(carry: RetentionState, xs):
        qt, kt, vt = xs  # (B, H, D)
        kv = carry.kv * g[None, :, None, None] + _einsum("bhd,bhv->bhdv", kt, vt)
        ksum = carry.ksum * g[None, :, None] + kt.astype(jnp.float32)
        num = _einsum("bhd,bhdv->bhv", qt, kv)
        rowsum = _einsum("bhd,bhd->bh", qt, ksum)
        o = _finish(num[:, :, None], rowsum[:, :, None], row_norm(carry.offset[..., None], g))[:, :, 0]
        return RetentionState(kv, ksum, carry.offset + 1), o

    xs = tuple(jnp.moveaxis(x, 2, 0) for x in (q, k, v))
    state, o = jax.lax.scan(step, state, xs)
    return jnp.moveaxis(o, 0, 2), state


def retention_chunkwise(q, k, v, gammas, state: RetentionState | None = None, chunk_size: int = 64):
    """Chunkwise form: parallel inside chunks of ``chunk_size``, recurrent across them.

    Any T works: the sequence is padded at the end with zeros up to a multiple of the chunk
    (causality keeps real outputs exact) and the state is taken after the last real step. T below the
    chunk is one chunk of T (no padding): a speculative verify pass of 4 bytes padded to 64 spent 14 µs a
    layer in the padded chunk, 20% of the pass's summed kernel time (125M, H200, 2026-12-01).
    """
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    state = state if state is not None else init_state(b, h, dk, dv)
    g = gammas.astype(jnp.float32)
    c = max(1, min(int(chunk_size), t))
    pad = (-t) % c
    if pad:
        widths = ((0, 0), (0, 0), (0, pad), (0, 0))
        q, k, v = (jnp.pad(x, widths) for x in (q, k, v))
    tp = t + pad
    n = tp // c
    k = k * (dk**-0.5)
    qc, kc, vc = (x.reshape(b, h, n, c, x.shape[-1]) for x in (q, k, v))

    i = jnp.arange(c)
    diff = (i[:, None] - i[None, :]).astype(jnp.float32)
    causal = diff >= 0
    decay = jnp.where(causal[None], g[:, None, None] ** jnp.where(causal, diff, 0.0)[None], 0.0)  # (H,C,C)
    scores = _einsum("bhncd,bhnsd->bhncs", qc, kc) * decay[None, :, None]
    inner = _einsum("bhncs,bhnsv->bhncv", scores, vc)
    inner_rowsum = scores.sum(-1)

    # what each chunk adds to the state, decayed to the chunk's last position
    w = g[:, None] ** (c - 1.0 - i[None, :])  # (H, C)
    kw = kc * w[None, :, None, :, None]
    chunk_kv = _einsum("bhncd,bhncv->bhndv", kw, vc)
    chunk_ks = kw.astype(jnp.float32).sum(3)
    gc = g**c

    def scan_fn(carry, xs):
        kv, ks = carry
        ckv, cks = xs
        new = (kv * gc[None, :, None, None] + ckv, ks * gc[None, :, None] + cks)
        return new, (kv, ks)

    (kv_last, ks_last), (kv_before, ks_before) = jax.lax.scan(
        scan_fn,
        (state.kv, state.ksum),
        (jnp.moveaxis(chunk_kv, 2, 0), jnp.moveaxis(chunk_ks, 2, 0)),
    )
    kv_before = jnp.moveaxis(kv_before, 0, 2)  # (B,H,N,Dk,Dv)
    ks_before = jnp.moveaxis(ks_before, 0, 2)  # (B,H,N,Dk)
    carry_decay = g[:, None] ** (i[None, :] + 1.0)  # (H, C)
    cross = _einsum("bhncd,bhndv->bhncv", qc, kv_before) * carry_decay[None, :, None, :, None]
    cross_rowsum = _einsum("bhncd,bhnd->bhnc", qc, ks_before) * carry_decay[None, :, None, :]

    num = (inner + cross).reshape(b, h, tp, dv)
    rowsum = (inner_rowsum + cross_rowsum).reshape(b, h, tp)
    positions = _positions(state.offset, tp)
    o = _finish(num, rowsum, row_norm(positions, g))[:, :, :t]
    if pad:  # state after the last real step: the last chunk's first c - pad steps only
        r = c - pad
        wr = jnp.where(i < r, g[:, None] ** jnp.maximum(r - 1.0 - i[None, :], 0.0), 0.0)  # (H, C)
        kwr = kc[:, :, -1] * wr[None, :, :, None]
        gr = (g**r)[None, :, None]
        kv_last = kv_before[:, :, -1] * gr[..., None] + _einsum("bhcd,bhcv->bhdv", kwr, vc[:, :, -1])
        ks_last = ks_before[:, :, -1] * gr + kwr.astype(jnp.float32).sum(2)
    return o, RetentionState(kv_last, ks_last, state.offset + t)


def retention(q, k, v, gammas, *, mode: str = "chunkwise", chunk_size: int = 64, state: RetentionState | None = None):
    """Multi-scale retention in the chosen form; see the module docstring for the function."""
    check_inputs(q, k, v, gammas)
    if mode == "parallel":
        return retention_parallel(q, k, v, gammas, state)
    if mode == "chunkwise":
        return retention_chunkwise(q, k, v, gammas, state, chunk_size)
    if mode == "recurrent":
        return retention_recurrent(q, k, v, gammas, state)
    raise ValueError(f"retention mode {mode!r} is not one of {MODES}")
