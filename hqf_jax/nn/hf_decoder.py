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

The configuration (DecoderConfig, families, activations, rope) is in hqf_jax.nn.hf_config, the layers (Linear,
Embedding, RMSNorm, Attention, MLP, DecoderLayer) in hqf_jax.nn.hf_layers; their public names are re-exported
here. This file holds the assembled model (HFDecoderLM) and its KV cache.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from hqf_jax.nn.hf_config import (  # noqa: F401 (re-exported: callers import them from hf_decoder)
    ACTIVATIONS, ARCHITECTURES, FAMILIES, DecoderConfig, HFConfigError, family_of, normalize_rope,
)
from hqf_jax.nn.hf_layers import (  # noqa: F401 (re-exported: callers import them from hf_decoder)
    MLP, Attention, DecoderLayer, Embedding, Linear, RMSNorm, _linear,
)
from hqf_jax.ops import rope as rope_ops


class KVCache(NamedTuple):
    """Per layer (k, v) of shape (B, KV, capacity, hd) in compute dtype; length: tokens written so far."""

    layers: tuple
    length: jax.Array


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
