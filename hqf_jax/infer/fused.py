"""The fused decode step of the byte LM: fewer, larger launches per layer than the module-by-module step.

Batch-1 decode is bound by launches and latency, not by reading weights (bench.generate; docs/generation.md).
Counted from the compiled HLO of the engine's decode loop (tests/test_infer_fused.py prints nothing; the
figures are in docs/generation.md): the module-by-module step is ~45 ops per layer (4 + 3 projection dots,
per-layer rotary and decay-norm tables, the retention step, group norm and gating each in several fusions).
This step does per layer

    RMSNorm -> one dot with [Wq | Wk | Wv | Wg] -> retention step + group norm + swish gate -> dot Wo ->
    residual + RMSNorm -> one dot with [Wgate | Wup] -> silu * up -> dot Wdown -> residual

with the rotary/xPos tables and the decay-row norms computed once per step for all layers (every layer has
the same positions and gammas). ``impl="xla"`` writes the middle part in jnp (XLA fuses it);
``impl="pallas"`` runs it as one Pallas kernel per layer (pallas_kernels/retention_decode_fused.py) that
reads q, k, v and the gate straight from the projection output. ``gemv_step`` (decode_impl "fused_gemv")
also moves the projections into Pallas GEMV kernels with their neighbours fused in
(pallas_kernels/decode_gemv.py), five kernels per layer and one for the head:

    [RMSNorm + dot Wqkvg] -> [mixer] -> [x + dot Wo] -> [RMSNorm + dot [Wgate|Wup] + silu * up] -> [x + dot Wdown]

Same logits as ``step.forward``'s recurrent step (tests in float32; the Pallas kernels in interpret mode
on CPU).

Weights: ``fuse_weights`` concatenates the projections once, when the engine prepares its parameters
(bf16 or float32). A quantized engine's fused matrices are quantized as wholes (``quantize_fused``: the same
method, each matrix's kernel layout picked by the dispatcher for its own shape), and ``fdot`` multiplies by
either kind. Per-column codecs (int, NF4, φ-grid) quantize a concatenation exactly as its parts (tested), so the
fused quantized step computes the module-by-module quantized step's products; NF4 with double quantization would
not (its second-level scale blocks would run across the joined columns), so it is refused. ``gemv_step`` takes
unquantized weights only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.infer.generator import EngineError
from hqf_jax.ops import retention as ret

FUSED_IMPLS = ("xla", "pallas", "gemv")


def fuse_weights(model) -> dict:
    """Concatenated projection kernels per layer, in the model's parameter dtype: {"qkvg": [(d, 2qk+2v)],
    "gu": [(d, 2f)]}. Raises ValueError when a layer is not a plain nnx.Linear (a quantized model)."""
    qkvg, gu = [], []
    for block in model.blocks:
        m, f = block.retention, block.ffn
        layers = (m.q, m.k, m.v, m.g, f.gate, f.up)
        if not all(type(x) is nnx.Linear and x.bias is None for x in layers):
            raise ValueError("the fused step needs plain bias-free nnx.Linear projections (not a quantized model)")
        qkvg.append(jnp.concatenate([x.kernel[...] for x in layers[:4]], axis=1))
        gu.append(jnp.concatenate([f.gate.kernel[...], f.up.kernel[...]], axis=1))
    g0 = np.asarray(model.blocks[0].retention.gammas[...])
    if any(not np.array_equal(np.asarray(b.retention.gammas[...]), g0) for b in model.blocks):
        raise ValueError("the fused step shares one decay table across layers; this model's gammas differ")
    return {"qkvg": qkvg, "gu": gu}


def quantize_fused(fw: dict, model, method: str, impl: str = "auto", batch: int = 1) -> dict:
    """``fw`` (fuse_weights of the unquantized model, in its parameter dtype) with each concatenated matrix
    quantized by ``method`` where the layers it joins are quantized in ``model`` (the engine's quantized model),
    else cast to its compute dtype; impl "auto" picks each matrix's layout for decode batch ``batch`` as
    QuantLinear does (so on a GPU a joined matrix may take another layout than its parts)."""
    from hqf_jax.quant.config import parse_method
    from hqf_jax.quant.model import QuantLinear, prepare_auto
    from hqf_jax.quant.qtensor import quantize

    if getattr(parse_method(method), "double_quant", False):  # before any matrix is quantized
        raise EngineError(f"{method}: double quantization's second-level scale blocks would span the joined columns "
                          "(other codes than the layers'); use decode_impl jnp or pallas")
    out = {"qkvg": [], "gu": []}
    for i, block in enumerate(model.blocks):
        m, f = block.retention, block.ffn
        for key, parts in (("qkvg", (m.q, m.k, m.v, m.g)), ("gu", (f.gate, f.up))):
            quantized = [isinstance(x, QuantLinear) for x in parts]
            w = fw[key][i]
            if all(quantized):
                w = prepare_auto(quantize(w, method), impl, batch)[1]
            elif not any(quantized):  # stored as the engine's other parameters are
                w = w.astype(jnp.dtype(model.cfg.compute_dtype))
            else:
                raise EngineError(f"block {i}: the fused {key} matrix joins quantized and unquantized layers "
                                 "(quantize_model's min_size keeps small layers unquantized); use a module-by-module "
                                 "decode_impl (jnp, pallas) for this model")
            out[key].append(w)
    return out


def fdot(x: jax.Array, w) -> jax.Array:
    """x @ w for a fused matrix: a plain array (cast to x's dtype) or a quantized one (quantize_fused), whose
    Pallas form runs in interpret mode on a CPU, as a QuantLinear's does."""
    if isinstance(w, (jax.Array, np.ndarray)):
        return jnp.dot(x, jnp.asarray(w).astype(x.dtype))
    from hqf_jax.quant.linear import impl_of, qlinear

    return qlinear(x, w, impl_of(w), interpret=jax.default_backend() == "cpu").astype(x.dtype)


def split_qkvg(h: jax.Array, cfg):
    """(q, k, v, gate) slices of a projection output h (..., 2qk+2v) made with fuse_weights' [Wq | Wk | Wv | Wg]."""
    qk, v = cfg.qk_dim, cfg.v_dim
    return h[..., :qk], h[..., qk:2 * qk], h[..., 2 * qk:2 * qk + v], h[..., 2 * qk + v:]


def gated_mlp_input(gu: jax.Array, cfg):
    """silu(gate) * up of a projection output gu (..., 2 ffn) made with fuse_weights' [Wgate | Wup]: what the MLP's
    down projection reads."""
    return nnx.silu(gu[..., :cfg.ffn_dim]) * gu[..., cfg.ffn_dim:]


def position_tables(cfg, offset: jax.Array):
    """cos, sin, xPos scale (B, Dk/2) float32 at each row's position ``offset`` (B,) (identity for 'none')."""
    dk = cfg.qk_dim // cfg.num_heads
    pos = jnp.asarray(offset)[:, None]  # (B, 1)
    if cfg.position == "none":
        one = jnp.ones((pos.shape[0], dk // 2), jnp.float32)
        return one, jnp.zeros_like(one), one
    angles = ret.rotary_angles(pos, dk, cfg.rope_theta)[:, 0]  # (B, Dk/2)
    if cfg.position == "xpos":
        zeta = (jnp.arange(0, dk, 2, dtype=jnp.float32) + 0.4 * dk) / (1.4 * dk)
        scale = zeta ** (pos.astype(jnp.float32) / 512.0)  # rotate_qk's xpos_scale_base
    else:
        scale = jnp.ones_like(angles)
    return jnp.cos(angles), jnp.sin(angles), scale


def _rot(x, cos, sin):  # rotate-half on (B, H, Dk) with (B, 1, Dk/2) tables
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x1 * cos - x2 * sin, x2 * cos + x1 * sin


def mixer_xla(h, gn_scale, gammas, rnorm, tables, state: ret.RetentionState, cfg):
    """The jnp form of the fused kernel: h (B, 2qk+2v) the projection output -> gated, group-normed retention
    output (B, v) float32 and the state after the step. rnorm (B, H)."""
    b = h.shape[0]
    nh = cfg.num_heads
    dk, dv = cfg.qk_dim // nh, cfg.v_dim // nh
    q, k, vv, gate = split_qkvg(h.astype(jnp.float32), cfg)
    q, k, vv = q.reshape(b, nh, dk), k.reshape(b, nh, dk), vv.reshape(b, nh, dv)
    cos, sin, xs = (t[:, None, :] for t in tables)
    q1, q2 = _rot(q, cos, sin)
    k1, k2 = _rot(k, cos, sin)
    q = jnp.concatenate([q1 * xs, q2 * xs], -1)
    k = jnp.concatenate([k1 / xs, k2 / xs], -1) * dk**-0.5
    g = gammas.astype(jnp.float32)[None, :, None]
    kv = state.kv * g[..., None] + k[..., :, None] * vv[..., None, :]
    ksum = state.ksum * g + k
    num = jnp.einsum("bhd,bhdv->bhv", q, kv, precision="highest")
    rowsum = jnp.sum(q * ksum, -1)
    r = rnorm[..., None]
    o = num * r / jnp.maximum(jnp.abs(rowsum[..., None] * r), 1.0)  # (B, H, Dv)
    return ret.head_norm_gate(o, gn_scale, gate, cfg.norm_eps), ret.RetentionState(kv, ksum, state.offset + 1)


def _per_step(model, state):
    """What every layer shares in one step: position tables, gammas, decay-row norms (B, H), next offset."""
    offset = jnp.asarray(state[0].offset)
    gammas = model.blocks[0].retention.gammas[...].astype(jnp.float32)
    rnorm = ret.row_norm(offset[:, None], gammas)[..., 0]
    return position_tables(model.cfg, offset), gammas, rnorm, offset + 1


def gemv_step(model, fw: dict, token: jax.Array, state: tuple, interpret: bool = False):
    """``fused_step`` with every projection a Pallas GEMV (norms, silu * up and residual adds fused in)."""
    from pallas_kernels.decode_gemv import decode_gemv  # here: loads Triton only when asked
    from pallas_kernels.retention_decode_fused import fused_mixer

    cfg = model.cfg
    dtype = jnp.dtype(cfg.compute_dtype)
    x = model.embed(token).astype(dtype)  # (B, d)
    tables, gammas, rnorm, nxt = _per_step(model, state)
    new = []
    for i, (block, s) in enumerate(zip(model.blocks, state)):
        m, f = block.retention, block.ffn
        h = decode_gemv(x, fw["qkvg"][i], block.norm1.scale[...], eps=block.norm1.epsilon, interpret=interpret)
        y, s = fused_mixer(h, m.group_norm.scale[...], gammas, rnorm, tables, s, cfg.num_heads, cfg.norm_eps,
                           interpret=interpret)
        x = decode_gemv(y, m.o.kernel[...], None, x, interpret=interpret)
        a = decode_gemv(x, fw["gu"][i], block.norm2.scale[...], eps=block.norm2.epsilon, glu=True,
                        interpret=interpret)
        x = decode_gemv(a, f.down.kernel[...], None, x, interpret=interpret)
        new.append(ret.RetentionState(s.kv, s.ksum, nxt))
    logits = decode_gemv(x, model.head.kernel[...], model.norm.scale[...], eps=model.norm.epsilon,
                         out_dtype=jnp.float32, interpret=interpret)
    return logits, tuple(new)


def padded_rows(f, a: jax.Array, rows: int) -> jax.Array:
    """f(a) for a (B, K) with the batch padded to ``rows`` (> B) behind an optimization barrier, the result
    sliced back to B rows: XLA lowers a one-row dot as a reduction fusion and a many-row one as a GEMM kernel
    (issue 15 measures which is faster at decode shapes); the barrier keeps the simplifier from folding the
    padding away. f must treat rows independently (a dot, an nnx.Linear)."""
    b = a.shape[0]
    if b >= rows:
        return f(a)
    return f(jax.lax.optimization_barrier(jnp.pad(a, ((0, rows - b), (0, 0)))))[:b]


def fused_step(model, fw: dict, token: jax.Array, state: tuple, impl: str = "xla", interpret: bool = False,
               dot_rows: int = 1):
    """token (B,) -> logits (B, V) float32 and the state after it (the same state tuple as step.forward).
    ``dot_rows`` > B runs the projections, MLP and head as dots of that many rows (``padded_rows``)."""
    if impl == "gemv":
        return gemv_step(model, fw, token, state, interpret)
    cfg = model.cfg
    dtype = jnp.dtype(cfg.compute_dtype)
    x = model.embed(token).astype(dtype)  # (B, d)
    tables, gammas, rnorm, nxt = _per_step(model, state)
    new = []
    for i, (block, s) in enumerate(zip(model.blocks, state)):
        m = block.retention
        h = padded_rows(lambda z: fdot(z, fw["qkvg"][i]), block.norm1(x).astype(dtype), dot_rows)
        gn = m.group_norm.scale[...]
        if impl in ("pallas", "pallas_split"):
            from pallas_kernels.retention_decode_fused import auto_v_split, fused_mixer  # loads Triton when asked

            split = auto_v_split(x.shape[0], cfg.num_heads, cfg.v_dim // cfg.num_heads) if impl == "pallas_split" else 1
            y, s = fused_mixer(h, gn, gammas, rnorm, tables, s, cfg.num_heads, cfg.norm_eps, interpret=interpret,
                               v_split=split)
        else:
            y, s = mixer_xla(h, gn, gammas, rnorm, tables, s, cfg)
        x = x + padded_rows(m.o, y.astype(dtype), dot_rows)
        gu = padded_rows(lambda z: fdot(z, fw["gu"][i]), block.norm2(x).astype(dtype), dot_rows)
        x = x + padded_rows(block.ffn.down, gated_mlp_input(gu, cfg), dot_rows)
        new.append(ret.RetentionState(s.kv, s.ksum, nxt))  # one offset array for every layer
    logits = padded_rows(model.head, model.norm(x).astype(jnp.float32), dot_rows)
    return logits, tuple(new)
