"""Flax NNX decoder for the Phi-3 / Phi-3.5 and Llama / Qwen2 / Mistral families (weight import).

The module tree mirrors the Hugging Face parameter names exactly, so the
safetensors key `model.layers.3.self_attn.qkv_proj.weight` is the NNX path
('model', 'layers', 3, 'self_attn', 'qkv_proj', 'weight'); `hf_loading` fills
it tensor by tensor. Linear weights keep the PyTorch layout (out, in).

Family differences handled here:
  phi3     fused qkv_proj (q | k | v rows) and gate_up_proj (gate | up rows), longrope/su rope scaling
  llama    separate q/k/v, optional attention_bias (q/k/v/o) and mlp_bias, llama3 / linear / dynamic rope
  qwen2    q/k/v biases (o_proj without), per-layer sliding window from layer_types
  mistral  sliding window on every layer (applied as a band in the causal mask)
GQA (num_key_value_heads < num_attention_heads) repeats each k/v head over its group.
Tied embeddings: no lm_head module; logits use embed_tokens.weight.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from hqf_jax.ops import rope as rope_ops

FAMILIES = ("phi3", "llama", "mistral", "qwen2")
# config.json's `architectures` names, for the folders whose config lacks model_type
ARCHITECTURES = {"Phi3ForCausalLM": "phi3", "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                 "Qwen2ForCausalLM": "qwen2"}


def family_of(hf: Mapping) -> str:
    """The decoder family of an HF config: model_type, else its first known `architectures` entry."""
    family = hf.get("model_type") or next((ARCHITECTURES[a] for a in hf.get("architectures") or () if a in ARCHITECTURES), None)
    if family not in FAMILIES:
        raise HFConfigError(f"model_type {family!r} (architectures {hf.get('architectures')}) is not supported; "
                            f"valid: {', '.join(FAMILIES)}")
    return family


def _gelu_erf(x):
    return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


# config.json's hidden_act, by transformers' names (transformers.activations.ACT2FN) and with its meaning:
# "gelu" is the exact erf form; gelu_new, gelu_pytorch_tanh, gelu_fast and gelu_accurate are the tanh
# approximation. prelu and xielu (activations with learned parameters) are not supported.
ACTIVATIONS = {
    "gelu": _gelu_erf,
    "gelu_python": _gelu_erf,
    "gelu_10": lambda x: jnp.clip(_gelu_erf(x), -10.0, 10.0),
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_python_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_accurate": _gelu_tanh,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),
    "relu6": jax.nn.relu6,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01),
    "hardswish": jax.nn.hard_swish,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "laplace": lambda x: 0.5 * (1.0 + jax.lax.erf((x - 0.707107) / (0.282095 * 2.0**0.5))),
    "sqrtsoftplus": lambda x: jnp.sqrt(jax.nn.softplus(x)),
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class KVCache(NamedTuple):
    """Per layer (k, v) of shape (B, KV, capacity, hd) in compute dtype; length: tokens written so far."""

    layers: tuple
    length: jax.Array


class HFConfigError(ValueError):
    """config.json describes a model this decoder does not implement."""


def _freeze(v: Any) -> Any:
    if isinstance(v, Mapping):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def normalize_rope(hf: Mapping) -> dict:
    """One flat rope dict (rope_type, rope_theta, partial_rotary_factor, type keys) from either config format.

    Accepts the transformers<5 form (rope_theta + rope_scaling with `type` or `rope_type`, `su` meaning longrope)
    and the transformers 5 form (rope_parameters). Phi-3 keeps original_max_position_embeddings at top level and it
    takes priority there, as in transformers.
    """
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    params = {**scaling, **params}
    params.setdefault("rope_type", params.pop("type", None) or "default")
    params.pop("type", None)
    if params["rope_type"] == "su":
        params["rope_type"] = "longrope"
    if hf.get("model_type") == "phi3" and params["rope_type"] == "yarn":
        params["rope_type"] = "longrope"  # transformers maps phi3's legacy "yarn" to longrope as well
    params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    params.setdefault("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if params["rope_type"] in ("llama3", "yarn", "longrope"):
        if "original_max_position_embeddings" in hf:
            params["original_max_position_embeddings"] = hf["original_max_position_embeddings"]
        else:
            params.setdefault("original_max_position_embeddings", hf["max_position_embeddings"])
    if params["rope_type"] not in rope_ops.ROPE_TYPES:
        raise HFConfigError(
            f"rope type {params['rope_type']!r} is not supported; valid: {', '.join(rope_ops.ROPE_TYPES)}"
        )
    return params


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    hidden_act: str
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    max_position_embeddings: int
    rope_items: tuple  # frozen normalised rope dict (hashable, the module's config is static)
    sliding_windows: tuple  # per layer: window length or None
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"

    @property
    def fused(self) -> bool:
        return self.family == "phi3"

    @property
    def rope(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.rope_items}

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return _DTYPES[self.param_dtype]

    def replace(self, **kw) -> "DecoderConfig":
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_hf(cls, hf: Mapping, dtype: str = "float32", param_dtype: str | None = None) -> "DecoderConfig":
        family = family_of(hf)
        if dtype not in _DTYPES or (param_dtype or dtype) not in _DTYPES:
            raise HFConfigError(f"dtype must be one of {', '.join(_DTYPES)}")
        act = hf.get("hidden_act", "silu")
        if act not in ACTIVATIONS:
            raise HFConfigError(f"hidden_act {act!r} is not supported; valid (transformers' names): {', '.join(ACTIVATIONS)}")
        heads = int(hf["num_attention_heads"])
        head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
        layers = int(hf["num_hidden_layers"])
        window = hf.get("sliding_window")
        if family == "qwen2":
            if not hf.get("use_sliding_window", False):
                window = None
            types = hf.get("layer_types") or [
                "sliding_attention" if window is not None and i >= hf.get("max_window_layers", 28) else "full_attention"
                for i in range(layers)
            ]
            windows = tuple(window if t == "sliding_attention" else None for t in types)
        else:
            windows = (window,) * layers
        if family == "llama":
            attn_bias, o_bias, mlp_bias = bool(hf.get("attention_bias")), bool(hf.get("attention_bias")), bool(
                hf.get("mlp_bias")
            )
        elif family == "qwen2":
            attn_bias, o_bias, mlp_bias = True, False, False
        else:
            attn_bias = o_bias = mlp_bias = False
        return cls(
            family=family,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            hidden_act=act,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=attn_bias,
            o_bias=o_bias,
            mlp_bias=mlp_bias,
            max_position_embeddings=int(hf["max_position_embeddings"]),
            rope_items=_freeze(normalize_rope(hf)),
            sliding_windows=windows,
            dtype=dtype,
            param_dtype=param_dtype or dtype,
        )

    @classmethod
    def from_json(cls, path: str, **kw) -> "DecoderConfig":
        with open(path) as f:
            return cls.from_hf(json.load(f), **kw)


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
        k, v = jnp.repeat(k, rep, axis=1), jnp.repeat(v, rep, axis=1)
        scores = jnp.einsum("bhqd,bhkd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32))
        scores = scores * (c.head_dim**-0.5)
        qi, ki = q_pos[:, None], k_pos[None, :]
        allowed = ki <= qi
        if self.window is not None:
            allowed = allowed & (ki > qi - self.window)
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(c.compute_dtype)
        out = jnp.einsum("bhqk,bhkd->bhqd", probs, v.astype(c.compute_dtype))
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


class DecoderBody(nnx.Module):
    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, rngs=rngs, **kw)
        self.layers = nnx.List([DecoderLayer(cfg, i, rngs) for i in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)


class HFDecoderLM(nnx.Module):
    """Causal LM over the token vocabulary: __call__(tokens (B,T) int32) -> logits (B,T,V) float32."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.model = DecoderBody(cfg, rngs)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else _linear(cfg, cfg.hidden_size, cfg.vocab_size, False, rngs)
        )

    def rope_tables(self, seq_len: int) -> tuple[jnp.ndarray, jnp.ndarray]:
        c = self.cfg
        inv_freq, scale = rope_ops.rope_frequencies(c.rope, c.head_dim, seq_len, c.max_position_embeddings)
        return rope_ops.rope_cos_sin(jnp.arange(seq_len), inv_freq, scale)

    def hidden_states(self, tokens: jnp.ndarray) -> jnp.ndarray:
        chex.assert_rank(tokens, 2)
        cos, sin = self.rope_tables(tokens.shape[1])
        x = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.model.norm(x)

    def head(self, x: jnp.ndarray) -> jnp.ndarray:
        if self.lm_head is None:
            return self.model.embed_tokens.attend(x)
        return self.lm_head(x)

    def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
        logits = self.head(self.hidden_states(tokens)).astype(jnp.float32)
        chex.assert_shape(logits, (*tokens.shape, self.cfg.vocab_size))
        return logits

    # ------------------------------------------------------------------ KV-cache decoding
    def init_cache(self, batch: int, max_len: int) -> KVCache:
        c = self.cfg
        shape = (batch, c.num_kv_heads, max_len, c.head_dim)
        zeros = tuple((jnp.zeros(shape, c.compute_dtype), jnp.zeros(shape, c.compute_dtype)) for _ in range(c.num_layers))
        return KVCache(zeros, jnp.zeros((), jnp.int32))

    def decode(self, tokens: jnp.ndarray, cache: KVCache) -> tuple[jnp.ndarray, KVCache]:
        """Prefill or step with a KV cache: tokens (B,T) at positions cache.length + [0, T) -> logits, cache.

        RoPE frequencies are chosen once for the cache's capacity (longrope: long factors iff it exceeds the
        original context), so a decode run uses one frequency set throughout.
        """
        c = self.cfg
        t, capacity = tokens.shape[1], cache.layers[0][0].shape[2]
        inv_freq, scale = rope_ops.rope_frequencies(c.rope, c.head_dim, capacity, c.max_position_embeddings)
        cos, sin = rope_ops.rope_cos_sin(cache.length + jnp.arange(t), inv_freq, scale)
        x = self.model.embed_tokens(tokens)
        layers = []
        for layer, kv in zip(self.model.layers, cache.layers):
            x, kv = layer(x, cos, sin, kv, cache.length)
            layers.append(kv)
        logits = self.head(self.model.norm(x)).astype(jnp.float32)
        return logits, KVCache(tuple(layers), cache.length + t)
