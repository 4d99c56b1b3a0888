"""The HF decoder's layers with Hugging Face parameter names: Linear (PyTorch (out, in) layout), Embedding,
RMSNorm, Attention (fused or separate q/k/v, GQA, optional sliding-window band), MLP and DecoderLayer.

hqf_jax.nn.hf_decoder assembles them into HFDecoderLM; RetNPhi (hqf_jax.nn.retnphi_layers) reuses them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hqf_jax.nn.hf_config import ACTIVATIONS, DecoderConfig
from hqf_jax.ops import rope as rope_ops


class Linear(nnx.Module):
    """y = x W^T + b with W of shape (out, in) as in PyTorch; computed in `dtype`."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype, param_dtype, rngs: nnx.Rngs | None):
        self.in_features, self.out_features = in_features, out_features
        self.dtype = dtype
        if rngs is None:  # filled by the caller (from_weights, loading)
            self.weight = nnx.Param(jnp.zeros((out_features, in_features), param_dtype))
        else:
            self.weight = nnx.Param(jax.nn.initializers.normal(0.02)(rngs.params(), (out_features, in_features), param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if bias else None

    @classmethod
    def from_weights(cls, weight: jnp.ndarray, bias: nnx.Param | None, dtype) -> "Linear":
        """A Linear holding `weight` (out, in) and the given bias variable (shared, not copied)."""
        lin = cls(1, 1, bias=False, dtype=dtype, param_dtype=weight.dtype, rngs=None)
        lin.out_features, lin.in_features = weight.shape
        lin.weight = nnx.Param(weight)
        lin.bias = bias
        return lin

    def base(self, x: jnp.ndarray) -> jnp.ndarray:
        y = jnp.einsum("...i,oi->...o", x.astype(self.dtype), self.weight[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return self.base(x)


class Embedding(nnx.Module):
    def __init__(self, num: int, features: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.weight = nnx.Param(jax.nn.initializers.normal(0.02)(rngs.params(), (num, features), param_dtype))

    def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
        return jnp.take(self.weight[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jnp.ndarray) -> jnp.ndarray:
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.weight[...].astype(self.dtype))


class RMSNorm(nnx.Module):
    def __init__(self, features: int, eps: float, *, dtype, param_dtype):
        self.eps, self.dtype = eps, dtype
        self.weight = nnx.Param(jnp.ones((features,), param_dtype))

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (self.weight[...].astype(jnp.float32) * xf).astype(self.dtype)


def _linear(cfg: DecoderConfig, i: int, o: int, bias: bool, rngs: nnx.Rngs) -> Linear:
    return Linear(i, o, bias=bias, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)


class Attention(nnx.Module):
    def __init__(self, cfg: DecoderConfig, layer: int, rngs: nnx.Rngs):
        self.cfg = cfg
        self.window = cfg.sliding_windows[layer]
        d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        if cfg.fused:
            self.qkv_proj = _linear(cfg, d, (h + 2 * kv) * hd, cfg.qkv_bias, rngs)
        else:
            self.q_proj = _linear(cfg, d, h * hd, cfg.qkv_bias, rngs)
            self.k_proj = _linear(cfg, d, kv * hd, cfg.qkv_bias, rngs)
            self.v_proj = _linear(cfg, d, kv * hd, cfg.qkv_bias, rngs)
        self.o_proj = _linear(cfg, h * hd, d, cfg.o_bias, rngs)

    def project_qkv(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """q (B,H,T,hd), k and v (B,KV,T,hd), before RoPE."""
        c = self.cfg
        b, t, _ = x.shape
        if c.fused:
            qkv = self.qkv_proj(x)
            nq, nk = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
            q, k, v = qkv[..., :nq], qkv[..., nq : nq + nk], qkv[..., nq + nk :]
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)

        def heads(y, n):
            return y.reshape(b, t, n, c.head_dim).transpose(0, 2, 1, 3)

        return heads(q, c.num_heads), heads(k, c.num_kv_heads), heads(v, c.num_kv_heads)

    def attend(self, q, k, v, q_pos, k_pos) -> jnp.ndarray:
        """Causal (optionally banded) softmax attention: q (B,H,Tq,hd), k/v (B,KV,Tk,hd) -> (B,Tq,H*hd)."""
        c = self.cfg
        b, _, tq, _ = q.shape
        rep = c.num_heads // c.num_kv_heads
        # grouped-query attention without repeating k / v to every query head: q's heads as (kv head, group)
        # (head h reads kv head h // rep, as a repeat along axis 1 would give). A repeated KV cache is rep times
        # the bytes a decode step reads.
        qg = q.reshape(b, c.num_kv_heads, rep, tq, q.shape[-1])
        scores = jnp.einsum("bgrqd,bgkd->bgrqk", qg.astype(jnp.float32), k.astype(jnp.float32))
        scores = scores * (c.head_dim**-0.5)
        qi, ki = q_pos[:, None], k_pos[None, :]
        allowed = ki <= qi
        if self.window is not None:
            allowed = allowed & (ki > qi - self.window)
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(c.compute_dtype)
        out = jnp.einsum("bgrqk,bgkd->bgrqd", probs, v.astype(c.compute_dtype)).reshape(b, c.num_heads, tq, -1)
        return out.transpose(0, 2, 1, 3).reshape(b, tq, c.num_heads * c.head_dim)

    def __call__(self, x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray, cache=None, length=None):
        """Without cache: x (B,T,D) -> (B,T,D). With cache (k, v of shape (B,KV,S,hd)) and `length` (tokens
        already in it): writes this call's keys/values at [length, length+T) and returns (out, cache)."""
        t = x.shape[1]
        q, k, v = self.project_qkv(x)
        q, k = rope_ops.apply_rope(q, cos, sin), rope_ops.apply_rope(k, cos, sin)
        if cache is None:
            pos = jnp.arange(t)
            return self.o_proj(self.attend(q, k, v, pos, pos))
        ck, cv = cache
        ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, 0, length, 0))
        cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, 0, length, 0))
        out = self.attend(q, ck, cv, length + jnp.arange(t), jnp.arange(ck.shape[2]))
        return self.o_proj(out), (ck, cv)


class MLP(nnx.Module):
    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d, f = cfg.hidden_size, cfg.intermediate_size
        if cfg.fused:
            self.gate_up_proj = _linear(cfg, d, 2 * f, cfg.mlp_bias, rngs)
        else:
            self.gate_proj = _linear(cfg, d, f, cfg.mlp_bias, rngs)
            self.up_proj = _linear(cfg, d, f, cfg.mlp_bias, rngs)
        self.down_proj = _linear(cfg, f, d, cfg.mlp_bias, rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        act = ACTIVATIONS[self.cfg.hidden_act]
        if self.cfg.fused:
            gu = self.gate_up_proj(x)
            gate, up = jnp.split(gu, 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(up * act(gate))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: DecoderConfig, layer: int, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.self_attn = Attention(cfg, layer, rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray, cache=None, length=None):
        if cache is None:
            x = x + self.self_attn(self.input_layernorm(x), cos, sin)
            return x + self.mlp(self.post_attention_layernorm(x))
        y, cache = self.self_attn(self.input_layernorm(x), cos, sin, cache, length)
        x = x + y
        return x + self.mlp(self.post_attention_layernorm(x)), cache
