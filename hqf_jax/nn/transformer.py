"""The standard decoder baseline: a Llama-style transformer byte LM (Flax NNX).

    tokens -> embed -> L x [x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x))] -> RMSNorm -> head

Attention is the standard layer: q, k, v, o projections of width d_model, RoPE on q and k, causal
softmax attention through ``jax.nn.dot_product_attention`` (hqf_jax.ops.attention: cuDNN flash
attention on a GPU with bf16, XLA elsewhere; ``attention_impl`` picks). No biases, no GroupNorm, no
gate. It shares the byte LM's interface for training and scoring (``model(tokens) -> logits``); it
keeps no KV cache, so ``step`` (generation) is not offered.

``TransformerConfig.matching(retnet_cfg)`` sizes it to the RetNet of the same model config: same
width, depth, heads, vocabulary and dtype, with the SwiGLU widened so the parameter counts agree
(a RetNet layer's retention has 2·qk_dim + 3·v_dim columns of d_model; attention has 4·d_model).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from hqf_jax.nn.retnet import RetNetConfig, SwiGLU, _dense
from hqf_jax.ops import attention as attn
from hqf_jax.ops import retention as ret
from hqf_jax.ops.constants import BYTE_VOCAB_SIZE

FFN_MULTIPLE = 8  # the matched SwiGLU width is rounded to this (tensor-core friendly; <1% off in parameters)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = BYTE_VOCAB_SIZE
    d_model: int = 256
    num_layers: int = 6
    num_heads: int = 4
    ffn_dim: int = 1280
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    compute_dtype: str = "float32"  # float32 | bfloat16; parameters stay float32
    attention_impl: str = "auto"  # auto | xla | cudnn

    @classmethod
    def matching(cls, r: RetNetConfig) -> "TransformerConfig":
        """The transformer with the parameters of RetNet ``r``: its SwiGLU takes the extra width."""
        d = r.d_model
        retention = d * (2 * r.qk_dim + 3 * r.v_dim) + r.v_dim  # q k v g o, GroupNorm scale
        extra = (retention - 4 * d * d) / (3 * d)
        ffn = max(FFN_MULTIPLE, int(round((r.ffn_dim + extra) / FFN_MULTIPLE)) * FFN_MULTIPLE)
        return cls(vocab_size=r.vocab_size, d_model=d, num_layers=r.num_layers, num_heads=r.num_heads, ffn_dim=ffn,
                   rope_theta=r.rope_theta, norm_eps=r.norm_eps, compute_dtype=r.compute_dtype,
                   attention_impl=r.attention_impl)

    @classmethod
    def from_dict(cls, d: Any) -> "TransformerConfig":
        """From a byte-LM model config (configs/lm.py's ``model``): matched to its RetNet."""
        return cls.matching(RetNetConfig.from_dict(d))

    def validate(self) -> None:
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ValueError(f"d_model ({self.d_model}) must split into num_heads ({self.num_heads}) heads of "
                             "even width")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.compute_dtype {self.compute_dtype!r} is not one of ('float32', 'bfloat16')")
        if self.attention_impl not in attn.ATTENTION_IMPLS:
            raise ValueError(f"model.attention_impl {self.attention_impl!r} is not one of {attn.ATTENTION_IMPLS}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


class Attention(nnx.Module):
    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.d_model
        self.q, self.k, self.v, self.o = (_dense(cfg, d, d, rngs) for _ in range(4))

    def qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x (B, T, d) -> rotated q, k and v, each (B, T, H, D)."""
        b, t, _ = x.shape
        c = self.cfg
        q, k, v = (p(x).reshape(b, t, c.num_heads, c.head_dim) for p in (self.q, self.k, self.v))
        # the RoPE of hqf_jax.ops.retention (the RetNet's "rope" position), on (B, H, T, D)
        q, k = ret.rotate_qk(q.swapaxes(1, 2), k.swapaxes(1, 2), jnp.arange(t), "rope", c.rope_theta)
        return q.swapaxes(1, 2), k.swapaxes(1, 2), v

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, _ = x.shape
        q, k, v = self.qkv(x)
        y = attn.causal_attention(q, k, v, self.cfg.attention_impl)
        return self.o(y.reshape(b, t, self.cfg.d_model))


class TransformerBlock(nnx.Module):
    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        self.norm1 = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, rngs=rngs)
        self.attention = Attention(cfg, rngs)
        self.norm2 = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, rngs=rngs)
        self.ffn = SwiGLU(cfg, rngs)

    def __call__(self, x):
        dtype = x.dtype
        x = x + self.attention(self.norm1(x).astype(dtype))
        return x + self.ffn(self.norm2(x).astype(dtype))


class TransformerLM(nnx.Module):
    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
        self.blocks = nnx.List([TransformerBlock(cfg, rngs) for _ in range(cfg.num_layers)])
        self.norm = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False, param_dtype=jnp.float32,
                               kernel_init=nnx.initializers.normal(cfg.d_model**-0.5), rngs=rngs)

    def __call__(self, tokens: jax.Array, state=None, *, form: str | None = None, return_state: bool = False):
        """tokens (B, T) int -> logits (B, T, V) float32. ``form`` is accepted for the byte-LM interface
        and ignored (one form); a state is refused: there is no KV cache."""
        del form
        if state is not None or return_state:
            raise ValueError("the transformer baseline keeps no KV cache: it trains and scores (model(tokens)); "
                             "generate with the RetNet (model.arch=retnet)")
        chex.assert_rank(tokens, 2)
        x = self.embed(tokens).astype(jnp.dtype(self.cfg.compute_dtype))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).astype(jnp.float32))

    def init_state(self, batch_size: int):
        raise ValueError("the transformer baseline keeps no KV cache, so it has no generation state; "
                         "generate with the RetNet (model.arch=retnet)")

    def step(self, token, state):
        return self.init_state(token.shape[0])
