"""RetNet byte language model (Flax NNX) over the 256 byte values plus BOS/EOS/PAD.

    tokens -> embed -> L x [x + MSR(RMSNorm(x)); x + SwiGLU(RMSNorm(x))] -> RMSNorm -> head

MSR is multi-scale retention (hqf_jax.ops.retention) with per-head GroupNorm and a swish
gate, as in Sun et al. (2023). The same weights run in three forms:

- ``model(tokens)``: training/scoring, in the configured form (parallel, chunkwise, the
  Pallas chunkwise kernel, or "auto": Pallas on a GPU, chunkwise elsewhere); ``model(tokens, state=s, return_state=True)`` prefills;
- ``model.step(token, state)``: one byte at a time with O(1) state per layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from hqf_jax.mesh_axes import BATCH_AXES, HEAD_AXIS
from hqf_jax.ops import attention as attn
from hqf_jax.ops import retention as ret
from hqf_jax.ops.constants import BYTE_VOCAB_SIZE

TRAIN_FORMS = ("auto", "parallel", "chunkwise", "pallas")


def resolve_form(form: str) -> str:
    """"auto" -> "pallas" on a GPU (under a mesh the kernel runs per device: sharded_chunk_retention),
    "chunkwise" elsewhere (CPU, TPU); explicit forms pass through."""
    if form != "auto":
        return form
    return "pallas" if jax.default_backend() == "gpu" else "chunkwise"


@dataclasses.dataclass(frozen=True)
class RetNetConfig:
    vocab_size: int = BYTE_VOCAB_SIZE
    d_model: int = 256
    num_layers: int = 6
    num_heads: int = 4
    qk_dim: int = 256  # total over heads
    v_dim: int = 512  # total over heads (the paper's value factor 2)
    ffn_dim: int = 1280
    position: str = "xpos"  # rope | xpos | none
    rope_theta: float = 10000.0
    gamma_base: float = -5.0  # gamma_h = 1 - 2^(gamma_base - h)
    form: str = "auto"  # auto | parallel | chunkwise | pallas (training/scoring form; auto: resolve_form)
    chunk_size: int = 64
    norm_eps: float = 1e-6
    compute_dtype: str = "float32"  # float32 | bfloat16; parameters stay float32
    # "retention" (this model) or "attention": causal softmax attention in the same slot with the same
    # projections, GroupNorm and gate (q/k repeated per value half: twice a standard layer's score and value work).
    # The standard decoder baseline is hqf_jax.nn.transformer (model.arch=transformer).
    mixer: str = "retention"
    attention_impl: str = "auto"  # auto | xla | cudnn (hqf_jax.ops.attention.resolve_impl)
    # residual dropout on each block's retention and FFN outputs; applied only when the call gets a
    # dropout_rng (the training loss passes its rng; scoring and generation never do). 0 = off.
    dropout: float = 0.0
    # multi-byte prediction: k extra linear heads on the final normed hidden state; head j predicts the byte
    # j + 1 places after the main head's (t+2..t+1+k). They drive self-speculative decoding (hqf_jax.infer).
    extra_heads: int = 0

    @classmethod
    def from_dict(cls, d: Any) -> "RetNetConfig":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def validate(self) -> None:
        if self.qk_dim % self.num_heads or self.v_dim % self.num_heads:
            raise ValueError(f"qk_dim ({self.qk_dim}) and v_dim ({self.v_dim}) must be multiples of num_heads ({self.num_heads})")
        if (self.qk_dim // self.num_heads) % 2:
            raise ValueError("qk_dim / num_heads must be even for the rotary position encoding")
        if self.form not in TRAIN_FORMS:
            raise ValueError(f"model.form {self.form!r} is not one of {TRAIN_FORMS}")
        if self.position not in ret.POSITION_KINDS:
            raise ValueError(f"model.position {self.position!r} is not one of {ret.POSITION_KINDS}")
        if self.mixer not in ("retention", "attention"):
            raise ValueError(f"model.mixer {self.mixer!r} is not one of ('retention', 'attention')")
        if self.extra_heads < 0:
            raise ValueError(f"model.extra_heads must be >= 0 (0 = none); got {self.extra_heads}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.compute_dtype {self.compute_dtype!r} is not one of ('float32', 'bfloat16')")
        if self.attention_impl not in attn.ATTENTION_IMPLS:
            raise ValueError(f"model.attention_impl {self.attention_impl!r} is not one of {attn.ATTENTION_IMPLS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout={self.dropout} must be in [0, 1) (0.1 is a common value; 0 = off)")


def _dense(cfg: RetNetConfig, n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        n_in, n_out, use_bias=False, dtype=jnp.dtype(cfg.compute_dtype), param_dtype=jnp.float32,
        kernel_init=nnx.initializers.normal(n_in**-0.5), rngs=rngs,
    )


class MultiScaleRetention(nnx.Module):
    def __init__(self, cfg: RetNetConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.d_model
        self.q = _dense(cfg, d, cfg.qk_dim, rngs)
        self.k = _dense(cfg, d, cfg.qk_dim, rngs)
        self.v = _dense(cfg, d, cfg.v_dim, rngs)
        self.g = _dense(cfg, d, cfg.v_dim, rngs)
        self.o = _dense(cfg, cfg.v_dim, d, rngs)
        self.group_norm = nnx.GroupNorm(cfg.v_dim, num_groups=cfg.num_heads, use_bias=False, epsilon=cfg.norm_eps, rngs=rngs)
        self.gammas = nnx.Variable(ret.default_gammas(cfg.num_heads, cfg.gamma_base))  # a constant, not trained

    def _heads(self, x: jax.Array) -> jax.Array:  # (B,T,H*D) -> (B,H,T,D)
        b, t, _ = x.shape
        return x.reshape(b, t, self.cfg.num_heads, -1).transpose(0, 2, 1, 3)

    def _attention(self, q, k, v):
        """Causal softmax attention (B,H,T,D) -> (B,H,T,Dv); when Dv = m*Dk the value heads are split in m
        parts that share their head's weights, which is exactly attention with value width Dv."""
        if self.cfg.mixer == "attention" and v.shape[-1] % q.shape[-1]:
            raise ValueError("the attention mixer needs v_dim/num_heads to be a multiple of qk_dim/num_heads")
        m = v.shape[-1] // q.shape[-1]
        b, h, t, d = q.shape
        to_bthd = lambda x: x.transpose(0, 2, 1, 3)
        qq, kk = (jnp.repeat(to_bthd(x), m, axis=2) for x in (q, k))
        vv = to_bthd(v).reshape(b, t, h * m, d)
        y = attn.causal_attention(qq, kk, vv, self.cfg.attention_impl)
        return y.reshape(b, t, h, m * d).transpose(0, 2, 1, 3)

    def __call__(self, x: jax.Array, state: ret.RetentionState | None, form: str):
        cfg = self.cfg
        b, t, _ = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        offset = jnp.zeros((), jnp.int32) if state is None else state.offset
        q, k = ret.rotate_qk(q, k, offset + jnp.arange(t), cfg.position, cfg.rope_theta)
        gammas = self.gammas[...]
        if cfg.mixer == "attention":
            if state is not None:
                raise ValueError("the attention mixer keeps no recurrent state: it is a training-cost baseline only")
            y = self._attention(q, k, v)
        elif form == "pallas":
            from pallas_kernels.retention import chunk_retention, sharded_chunk_retention  # loads Triton: only here

            interpret = jax.default_backend() == "cpu"
            if state is None:  # training/scoring: one kernel per device's rows and heads under a mesh
                y, state = sharded_chunk_retention(q, k, v, gammas, cfg.chunk_size, interpret,
                                                   batch_axes=BATCH_AXES, head_axis=HEAD_AXIS)
            else:
                y, state = chunk_retention(q, k, v, gammas, state=state, chunk_size=cfg.chunk_size, interpret=interpret)
        else:
            y, state = ret.retention(q, k, v, gammas, mode=form, chunk_size=cfg.chunk_size, state=state)
        y = y.transpose(0, 2, 1, 3).reshape(b, t, cfg.v_dim)
        # GroupNorm per position: fold time into the batch so statistics never mix positions
        y = self.group_norm(y.reshape(b * t, cfg.v_dim).astype(jnp.float32)).reshape(b, t, cfg.v_dim).astype(x.dtype)
        return self.o(nnx.swish(self.g(x)) * y), state


class SwiGLU(nnx.Module):
    def __init__(self, cfg: RetNetConfig, rngs: nnx.Rngs):
        self.gate = _dense(cfg, cfg.d_model, cfg.ffn_dim, rngs)
        self.up = _dense(cfg, cfg.d_model, cfg.ffn_dim, rngs)
        self.down = _dense(cfg, cfg.ffn_dim, cfg.d_model, rngs)

    def __call__(self, x):
        return self.down(nnx.silu(self.gate(x)) * self.up(x))


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout: zero each element with probability ``rate``, scale the rest by 1/(1-rate).
    The identity (the very same array) when ``key`` is None or ``rate`` is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


class RetNetBlock(nnx.Module):
    def __init__(self, cfg: RetNetConfig, rngs: nnx.Rngs):
        self.rate = cfg.dropout
        self.norm1 = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, rngs=rngs)
        self.retention = MultiScaleRetention(cfg, rngs)
        self.norm2 = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, rngs=rngs)
        self.ffn = SwiGLU(cfg, rngs)

    def __call__(self, x, state, form, key=None):
        dtype = x.dtype
        keys = jax.random.split(key) if key is not None and self.rate else (None, None)
        y, state = self.retention(self.norm1(x).astype(dtype), state, form)
        x = x + dropout(y, self.rate, keys[0])
        x = x + dropout(self.ffn(self.norm2(x).astype(dtype)), self.rate, keys[1])
        return x, state


class RetNetLM(nnx.Module):
    def __init__(self, cfg: RetNetConfig, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
        self.blocks = nnx.List([RetNetBlock(cfg, rngs) for _ in range(cfg.num_layers)])
        self.norm = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False, param_dtype=jnp.float32,
                               kernel_init=nnx.initializers.normal(cfg.d_model**-0.5), rngs=rngs)
        if cfg.extra_heads:
            self.extra_heads = nnx.List([
                nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False, param_dtype=jnp.float32,
                           kernel_init=nnx.initializers.normal(cfg.d_model**-0.5), rngs=rngs)
                for _ in range(cfg.extra_heads)])

    def extra_logits(self, hidden: jax.Array) -> jax.Array:
        """Extra heads on the normed hidden state (..., d) -> (k, ..., V): head j predicts t + 2 + j."""
        return jnp.stack([h(hidden) for h in self.extra_heads])

    def init_state(self, batch_size: int) -> tuple[ret.RetentionState, ...]:
        c = self.cfg
        return tuple(ret.init_state(batch_size, c.num_heads, c.qk_dim // c.num_heads, c.v_dim // c.num_heads)
                     for _ in range(c.num_layers))

    def __call__(self, tokens: jax.Array, state=None, *, form: str | None = None, return_state: bool = False,
                 dropout_rng: jax.Array | None = None, return_hidden: bool = False):
        """tokens (B, T) int -> logits (B, T, V) float32 [, state after the last token] [, normed hidden
        (B, T, d) float32, what the extra heads read]. ``dropout_rng`` (training only) applies the config's
        dropout; without it the call is deterministic."""
        chex.assert_rank(tokens, 2)
        form = resolve_form(form or self.cfg.form)
        x = self.embed(tokens).astype(jnp.dtype(self.cfg.compute_dtype))
        states = state if state is not None else (None,) * self.cfg.num_layers
        new_states = []
        for i, (block, s) in enumerate(zip(self.blocks, states)):
            key = jax.random.fold_in(dropout_rng, i) if dropout_rng is not None and self.cfg.dropout else None
            x, s = block(x, s, form, key)
            new_states.append(s)
        hidden = self.norm(x).astype(jnp.float32)
        logits = self.head(hidden)
        out = (logits,) + ((tuple(new_states),) if return_state else ()) + ((hidden,) if return_hidden else ())
        return out if len(out) > 1 else logits

    def step(self, token: jax.Array, state) -> tuple[jax.Array, tuple]:
        """One byte per sequence: token (B,) -> logits (B, V), state (O(1) in the length)."""
        chex.assert_rank(token, 1)
        logits, state = self(token[:, None], state, form="recurrent", return_state=True)
        return logits[:, 0], state


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
