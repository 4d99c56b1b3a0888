"""RetNPhi's layers: multi-scale retention on a pretrained decoder layer's projections (RetentionAttention,
with the decay schedule, the per-head GroupNorm and the optional swish gate), the converted decoder layer
(RetNPhiLayer) and its rematerialised call. The conversion choices are described in hqf_jax.nn.retnphi.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.nn.hf_layers import MLP, Attention, Linear, RMSNorm
from hqf_jax.nn.retnphi_config import RetNPhiConfig
from hqf_jax.ops import retention as ret
from hqf_jax.ops import rope as rope_ops


def retention_gammas(num_heads: int, exp_first: float, exp_last: float) -> np.ndarray:
    """gamma_h = 1 - 2^e_h, e_h = linspace(exp_first, exp_last, H) (float32; all < 1 for exponents > -24)."""
    exps = np.linspace(exp_first, exp_last, num_heads) if num_heads > 1 else np.array([exp_first])
    return (1.0 - np.exp2(exps)).astype(np.float32)


class HeadNorm(nnx.Module):
    """GroupNorm with one group per head over (B, T, H, hd), statistics per position, learned scale (H*hd,)."""

    def __init__(self, heads: int, head_dim: int, eps: float):
        self.heads, self.head_dim, self.eps = heads, head_dim, eps
        self.weight = nnx.Param(jnp.ones((heads * head_dim,), jnp.float32))

    def __call__(self, y: jnp.ndarray) -> jnp.ndarray:
        y = y.astype(jnp.float32)
        mean = y.mean(-1, keepdims=True)
        var = jnp.square(y - mean).mean(-1, keepdims=True)
        y = (y - mean) * jax.lax.rsqrt(var + self.eps)
        return y * self.weight[...].reshape(self.heads, self.head_dim)


class RetentionAttention(Attention):
    """Multi-scale retention in place of softmax attention, on the pretrained projections."""

    def __init__(self, attn: Attention, rcfg: RetNPhiConfig, rngs: nnx.Rngs):
        c = attn.cfg
        self.cfg, self.rcfg, self.window = c, rcfg, None
        for name in ("qkv_proj", "q_proj", "k_proj", "v_proj", "o_proj"):
            if hasattr(attn, name):
                setattr(self, name, getattr(attn, name))
        self.gammas = nnx.Variable(jnp.asarray(retention_gammas(c.num_heads, rcfg.gamma_exp_first, rcfg.gamma_exp_last)))
        self.group_norm = HeadNorm(c.num_heads, c.head_dim, rcfg.group_norm_eps) if rcfg.group_norm else None
        self.ret_gate = (
            Linear(c.hidden_size, c.num_heads * c.head_dim, bias=False, dtype=c.compute_dtype,
                   param_dtype=jnp.float32, rngs=rngs)
            if rcfg.gate == "swish"
            else None
        )
        context = rcfg.rope_context or c.rope.get("original_max_position_embeddings", c.max_position_embeddings)
        inv_freq, scale = rope_ops.rope_frequencies(c.rope, c.head_dim, int(context), c.max_position_embeddings)
        self.inv_freq = nnx.Variable(jnp.asarray(inv_freq))  # a constant of the conversion, not trained
        self.rope_scale = float(scale)

    def _rotate(self, q, k, positions):
        if self.rcfg.position == "hf":
            cos, sin = rope_ops.rope_cos_sin(positions, self.inv_freq[...], self.rope_scale)
            return rope_ops.apply_rope(q, cos, sin), rope_ops.apply_rope(k, cos, sin)
        return ret.rotate_qk(q, k, positions, self.rcfg.position, xpos_scale_base=self.rcfg.xpos_scale_base)

    def __call__(self, x: jnp.ndarray, state: ret.RetentionState | None, form: str, kvs: list | None = None):
        """``kvs`` (a list) collects (state before, k, v, gammas) for hqf_jax.infer.step.absorb (speculative
        verify). A state's offset is () or (B,) (rows at their own positions after a verify)."""
        c, r = self.cfg, self.rcfg
        b, t, _ = x.shape
        q, k, v = self.project_qkv(x)
        offset = jnp.zeros((), jnp.int32) if state is None else state.offset
        positions = offset + jnp.arange(t) if jnp.ndim(offset) == 0 else offset[:, None, None] + jnp.arange(t)
        q, k = self._rotate(q, k, positions)
        rep = c.num_heads // c.num_kv_heads
        k, v = jnp.repeat(k, rep, axis=1), jnp.repeat(v, rep, axis=1)
        gammas = self.gammas[...]
        if kvs is not None:
            kvs.append((state, k, v, gammas))
        if form == "pallas":
            from pallas_kernels.retention import chunk_retention

            y, state = chunk_retention(q, k, v, gammas, state=state, chunk_size=r.chunk_size,
                                       interpret=jax.default_backend() == "cpu")
        else:
            y, state = ret.retention(q, k, v, gammas, mode=form, chunk_size=r.chunk_size, state=state)
        y = y.transpose(0, 2, 1, 3)  # (B, T, H, hd) float32
        if self.group_norm is not None:
            y = self.group_norm(y)
        y = y.reshape(b, t, c.num_heads * c.head_dim).astype(c.compute_dtype)
        if self.ret_gate is not None:
            y = jax.nn.swish(self.ret_gate(x)) * y
        return self.o_proj(y), state


class RetNPhiLayer(nnx.Module):
    def __init__(self, layer, rcfg: RetNPhiConfig, rngs: nnx.Rngs):
        self.input_layernorm: RMSNorm = layer.input_layernorm
        self.self_attn = RetentionAttention(layer.self_attn, rcfg, rngs)
        self.post_attention_layernorm: RMSNorm = layer.post_attention_layernorm
        self.mlp: MLP = layer.mlp

    def __call__(self, x, state, form, kvs=None):
        y, state = self.self_attn(self.input_layernorm(x), state, form, kvs)
        x = x + y
        return x + self.mlp(self.post_attention_layernorm(x)), state


def _remat_layer(layer: RetNPhiLayer, x, state, form: str):
    """layer(x, state, form) under jax.checkpoint on the layer's split state (works under plain jax.grad of an
    nnx.merge'd model as well as under nnx transforms); RNG counters (LoRA dropout) are written back."""
    graphdef, variables = nnx.split(layer)

    def pure(variables, x, state):
        m = nnx.merge(graphdef, variables, copy=True)
        out = m(x, state, form)
        return out, nnx.state(m, nnx.RngState)

    out, rng_state = jax.checkpoint(pure)(variables, x, state)
    active = any(isinstance(m, nnx.Dropout) and not m.deterministic for _, m in nnx.iter_modules(layer))
    if active:  # only active dropout advances RNG counters
        nnx.update(layer, rng_state)
    return out
