"""The byte LM's forward pass for inference (hqf_jax.infer.engine and what drives it: speculative decoding,
GRPO rollouts): the model's own modules around the retention step, with each row at its own position and left
padding that leaves the state exactly zero; the decode step in its module-by-module or fused forms.

``forward`` takes T == 1 through the recurrent step (``ops.retention.retention_step`` or the Pallas decode kernel,
``decode_impl="pallas"``) and T > 1 through the chunkwise form, with the projections as the model's layers or, given
``fw`` (fused.fuse_weights), as one dot with [Wq | Wk | Wv | Wg] and one with [Wgate | Wup] a layer; ``absorb``
rebuilds the state after the first m tokens of a chunk (speculative verify); ``step_logits`` is one decode step in
any DECODE_IMPLS form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hqf_jax.infer import fused
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM
from hqf_jax.ops import retention as ret


def _projections(m, x, qkvg=None):
    """(q, k, v, gate) pre-activations of x (B, T, d): the layers', or slices of one dot with qkvg."""
    if qkvg is None:
        return m.q(x), m.k(x), m.v(x), m.g(x)
    return fused.split_qkvg(fused.fdot(x, qkvg), m.cfg)


def _retention(m, x, state: ret.RetentionState, valid, decode_impl: str, interpret: bool, kvs=None, qkvg=None):
    cfg = m.cfg
    b, t, _ = x.shape
    q, k, v, gate = _projections(m, x, qkvg)
    q, k, v = m._heads(q), m._heads(k), m._heads(v)
    positions = jnp.asarray(state.offset)[:, None] + jnp.arange(t)  # (B, T): each row's own positions
    q, k = ret.rotate_qk(q, k, positions[:, None, :], cfg.position, cfg.rope_theta)
    gammas = m.gammas[...]
    if valid is not None:  # left padding: no key, no value, so the state stays exactly zero through it
        k = k * valid[:, None, :, None].astype(k.dtype)
        v = v * valid[:, None, :, None].astype(v.dtype)
    if t == 1:
        if decode_impl == "pallas":
            from pallas_kernels.retention_decode import retention_decode_step  # here: loads Triton only when asked

            y, state = retention_decode_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], gammas, state, interpret=interpret)
        else:
            y, state = ret.retention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], gammas, state)
        y = y[:, :, None]
    else:
        if kvs is not None:  # speculative verify: the state is taken later, after as many steps as accepted
            kvs.append((state, k, v, gammas))
        y, state = ret.retention_chunkwise(q, k, v, gammas, state, cfg.chunk_size)
    y = y.transpose(0, 2, 1, 3).reshape(b, t, cfg.v_dim)
    y = m.group_norm(y.reshape(b * t, cfg.v_dim).astype(jnp.float32)).reshape(b, t, cfg.v_dim).astype(x.dtype)
    return m.o(nnx.swish(gate) * y), state


def forward(model: RetNetLM, tokens: jax.Array, state: tuple, valid: jax.Array | None = None,
            decode_impl: str = "jnp", interpret: bool = False, kvs: list | None = None, return_hidden=False,
            fw: dict | None = None):
    """tokens (B, T) -> logits (B, T, V) float32 and the state after them; state offsets (B,). T == 1 takes the
    recurrent step, T > 1 the chunkwise form. ``valid`` (B, T) marks real tokens (False: left padding).
    ``kvs`` (a list) collects each layer's (state before, k, v, gammas) for ``absorb``; ``return_hidden`` adds
    the normed hidden state (B, T, d) float32 (what the extra heads read). ``fw``: the engine's fused weights,
    for fewer, wider dots (the same products)."""
    cfg = model.cfg
    dtype = jnp.dtype(cfg.compute_dtype)
    x = model.embed(tokens).astype(dtype)
    new = []
    for i, (block, s) in enumerate(zip(model.blocks, state)):
        y, s = _retention(block.retention, block.norm1(x).astype(dtype), s, valid, decode_impl, interpret, kvs,
                          None if fw is None else fw["qkvg"][i])
        x = x + y
        h = block.norm2(x).astype(dtype)
        if fw is None:
            x = x + block.ffn(h)
        else:
            x = x + block.ffn.down(fused.gated_mlp_input(fused.fdot(h, fw["gu"][i]), cfg))
        new.append(s)
    hidden = model.norm(x).astype(jnp.float32)
    logits = model.head(hidden)
    return (logits, tuple(new), hidden) if return_hidden else (logits, tuple(new))


def absorb(kvs: list, keep: jax.Array) -> tuple:
    """The state after the first ``keep`` (B,) steps of a chunk, per row, from what ``forward(kvs=...)``
    collected: S = gamma^m S_0 + sum_{i<m} gamma^(m-1-i) k_i^T v_i (and z alike), offset + m."""
    out = []
    for state, k, v, gammas in kvs:
        g = gammas.astype(jnp.float32)
        t, dk = k.shape[2], k.shape[3]
        m = keep.astype(jnp.float32)[:, None, None]  # (B, 1, 1)
        i = jnp.arange(t, dtype=jnp.float32)[None, None, :]
        w = jnp.where(i < m, g[None, :, None] ** jnp.maximum(m - 1.0 - i, 0.0), 0.0)  # (B, H, T)
        kw = k.astype(jnp.float32) * (dk**-0.5) * w[..., None]
        gm = g[None, :] ** keep.astype(jnp.float32)[:, None]  # (B, H)
        kv = state.kv * gm[..., None, None] + jnp.einsum("bhtd,bhtv->bhdv", kw, v.astype(jnp.float32))
        ksum = state.ksum * gm[..., None] + kw.sum(2)
        out.append(ret.RetentionState(kv, ksum, state.offset + keep.astype(jnp.int32)))
    return tuple(out)


def init_state(cfg: RetNetConfig, offsets: jax.Array) -> tuple:
    b = offsets.shape[0]
    dk, dv = cfg.qk_dim // cfg.num_heads, cfg.v_dim // cfg.num_heads
    return tuple(ret.RetentionState(jnp.zeros((b, cfg.num_heads, dk, dv), jnp.float32),
                                    jnp.zeros((b, cfg.num_heads, dk), jnp.float32), offsets.astype(jnp.int32))
                 for _ in range(cfg.num_layers))




def step_logits(model, fw, token, state, decode_impl: str, interpret: bool, dot_rows: int = 1):
    """One decode step token (B,) -> logits (B, V) float32, state: the module-by-module step (jnp | pallas)
    or the fused one (fused | fused_pallas | fused_pallas_split | fused_gemv, with ``fw`` from fused.fuse_weights)."""
    if decode_impl.startswith("fused"):
        impl = {"fused": "xla", "fused_pallas": "pallas", "fused_pallas_split": "pallas_split",
                "fused_gemv": "gemv"}[decode_impl]
        return fused.fused_step(model, fw, token, state, impl, interpret, dot_rows)
    logits, state = forward(model, token[:, None], state, None, decode_impl, interpret)
    return logits[:, 0], state
