"""RetNPhi: a pretrained HF decoder turned into a byte-level retention LM.

Conversion (`RetNPhi.from_decoder`): every softmax attention becomes multi-scale retention
(hqf_jax.ops.retention) that reuses the pretrained q/k/v/o projections (the same Linear modules and
variables, so LoRA targets keep their names); GQA repeats each k/v head over its group. Which of
RetNet's pieces are added is configuration:

  position     "hf"   the checkpoint's own RoPE (rope_scaling included; longrope picks its factor set once,
                       from `rope_context`, so every form and every position uses the same frequencies)
               "xpos" | "none"  (hqf_jax.ops.retention.rotate_qk)
  decays       gamma_h = 1 - 2^e_h, e_h evenly spaced from gamma_exp_first to gamma_exp_last
               (RetNet's 1 - 2^(-5-h) schedule reaches gamma == 1.0 in float32 beyond ~19 heads)
  group_norm   per-head normalisation of the retention output with a learned scale (RetNet's GroupNorm)
  gate         "none" | "swish": o_proj(swish(ret_gate(x)) * y), ret_gate a new (H*hd, D) projection

The token embedding and head are replaced by a byte embedding and head over BYTE_VOCAB_SIZE ids.
Byte embedding init "random", or "tokens": byte b's vector = mean of the embeddings of the tokenizer's
tokens whose bytes start with b (the single-byte token included); the byte head is initialised the same
way from the token head (the embedding when tied). BOS/EOS/PAD take the tokenizer's bos/eos/pad rows.

Interface of the byte LM (hqf_jax.nn.retnet.RetNetLM): __call__(tokens (B,T) int32, state=None, *, form=None,
return_state=False) -> logits (B,T,V) [, state]; init_state(batch); step(token (B,), state) -> (logits (B,V), state).

The configuration is in hqf_jax.nn.retnphi_config, the retention layers in hqf_jax.nn.retnphi_layers, the byte
rows from the token model (tokenizer, token bytes) in hqf_jax.nn.retnphi_byte_rows; their public names are
re-exported here. This file holds the model (RetNPhi) and its builders (build_retnphi, abstract_retnphi).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import chex
import jax.numpy as jnp
from flax import nnx

from hqf_jax.nn.hf_config import DecoderConfig
from hqf_jax.nn.hf_decoder import HFDecoderLM
from hqf_jax.nn.hf_layers import Embedding, Linear
from hqf_jax.nn.retnphi_byte_rows import (  # noqa: F401 (re-exported: callers import them from retnphi)
    TOKENIZER_FILES, byte_rows_from_tokens, check_tokenizer, load_tokenizer, random_byte_rows, token_bytes,
)
from hqf_jax.nn.retnphi_config import (  # noqa: F401 (re-exported: callers import them from retnphi)
    BYTE_INITS, FORMS, GATES, POSITIONS, RetNPhiConfig, RetNPhiConfigError,
)
from hqf_jax.nn.retnphi_layers import (  # noqa: F401 (re-exported: callers import them from retnphi)
    HeadNorm, RetentionAttention, RetNPhiLayer, _remat_layer, retention_gammas,
)
from hqf_jax.ops import retention as ret
from hqf_jax.ops.constants import BYTE_VOCAB_SIZE


class RetNPhi(nnx.Module):
    """Byte-level retention LM built from a pretrained decoder (see the module docstring)."""

    def __init__(self, decoder: HFDecoderLM, rcfg: RetNPhiConfig, *, rngs: nnx.Rngs,
                 byte_embed: jnp.ndarray | None = None, byte_head: jnp.ndarray | None = None):
        c = decoder.cfg
        self.cfg, self.rcfg = c, rcfg
        d = c.hidden_size
        self.layers = nnx.List([RetNPhiLayer(layer, rcfg, rngs) for layer in decoder.model.layers])
        self.norm = decoder.model.norm
        # byte embedding / head: float32 (they train); (V, D) and (V, D) as Embedding / Linear weights
        self.byte_embed = Embedding(BYTE_VOCAB_SIZE, d, dtype=c.compute_dtype, param_dtype=jnp.float32, rngs=rngs)
        self.byte_head = Linear(d, BYTE_VOCAB_SIZE, bias=False, dtype=c.compute_dtype, param_dtype=jnp.float32, rngs=rngs)
        if byte_embed is not None:
            self.byte_embed.weight.set_value(jnp.asarray(byte_embed, jnp.float32))
        if byte_head is not None:
            self.byte_head.weight.set_value(jnp.asarray(byte_head, jnp.float32))
        if rcfg.extra_heads:  # start as copies of the byte head (the next byte's law is the best prior at hand)
            self.extra_heads = nnx.List([
                Linear(d, BYTE_VOCAB_SIZE, bias=False, dtype=c.compute_dtype, param_dtype=jnp.float32, rngs=rngs)
                for _ in range(rcfg.extra_heads)])
            for h in self.extra_heads:
                h.weight.set_value(jnp.copy(self.byte_head.weight.get_value()))  # own buffers (donated apart)

    def extra_logits(self, hidden: jnp.ndarray) -> jnp.ndarray:
        """Extra heads on the normed hidden state (..., D) -> (k, ..., V) float32: head j predicts t + 2 + j."""
        return jnp.stack([h(hidden).astype(jnp.float32) for h in self.extra_heads])

    @classmethod
    def from_decoder(cls, decoder: HFDecoderLM, rcfg: RetNPhiConfig, tokenizer=None) -> "RetNPhi":
        """Convert `decoder` (its layers are moved, not copied). byte_init='tokens' needs `tokenizer`."""
        rngs = nnx.Rngs(rcfg.seed)
        if rcfg.byte_init == "tokens":
            if tokenizer is None:
                raise RetNPhiConfigError("byte_init='tokens' needs the checkpoint's tokenizer; pass tokenizer= or set byte_init='random'")
            check_tokenizer(tokenizer)
            emb, head = byte_rows_from_tokens(decoder, tokenizer, rcfg)
        else:
            emb, head = random_byte_rows(decoder, rcfg)
        return cls(decoder, rcfg, rngs=rngs, byte_embed=emb, byte_head=head)

    @classmethod
    def from_pretrained(cls, folder: str, rcfg: RetNPhiConfig, *, dtype: str = "float32",
                        param_dtype: str | None = None, progress: bool = True) -> "RetNPhi":
        """Load an HF checkpoint folder (safetensors) and convert it; the tokenizer comes from the same folder."""
        from hqf_jax.nn.hf_loading import load_hf_decoder

        decoder = load_hf_decoder(folder, dtype=dtype, param_dtype=param_dtype, progress=progress)
        tokenizer = load_tokenizer(folder) if rcfg.byte_init == "tokens" else None
        return cls.from_decoder(decoder, rcfg, tokenizer)

    # ------------------------------------------------------------------ byte-LM interface
    def init_state(self, batch_size: int) -> tuple[ret.RetentionState, ...]:
        c = self.cfg
        return tuple(ret.init_state(batch_size, c.num_heads, c.head_dim, c.head_dim) for _ in self.layers)

    def __call__(self, tokens: jnp.ndarray, state=None, *, form: str | None = None, return_state: bool = False,
                 return_hidden: bool = False, kvs: list | None = None):
        """tokens (B, T) int -> logits (B, T, BYTE_VOCAB_SIZE) float32 [, state after the last token] [, normed
        hidden (B, T, D), what the extra heads read]. ``kvs``: see RetentionAttention (speculative verify)."""
        chex.assert_rank(tokens, 2)
        form = form or self.rcfg.form
        x = self.byte_embed(tokens)
        states = state if state is not None else (None,) * len(self.layers)
        new_states = []
        remat = self.rcfg.remat and form != "recurrent" and kvs is None
        for layer, s in zip(self.layers, states):
            x, s = _remat_layer(layer, x, s, form) if remat else layer(x, s, form, kvs)
            new_states.append(s)
        hidden = self.norm(x)
        logits = self.byte_head(hidden).astype(jnp.float32)
        chex.assert_shape(logits, (*tokens.shape, BYTE_VOCAB_SIZE))
        out = (logits,) + ((tuple(new_states),) if return_state else ()) + ((hidden,) if return_hidden else ())
        return out if len(out) > 1 else logits

    def step(self, token: jnp.ndarray, state) -> tuple[jnp.ndarray, tuple]:
        """One byte per sequence: token (B,) -> logits (B, V), state (O(1) in the length)."""
        chex.assert_rank(token, 1)
        logits, state = self(token[:, None], state, form="recurrent", return_state=True)
        return logits[:, 0], state

def abstract_retnphi(cfg: DecoderConfig, rcfg: RetNPhiConfig, lora=None) -> RetNPhi:
    """RetNPhi (optionally with LoRA applied) as ShapeDtypeStructs: for counting and memory planning."""
    from hqf_jax.nn.lora import apply_lora

    def build():
        model = RetNPhi(HFDecoderLM(cfg, rngs=nnx.Rngs(0)), dataclasses.replace(rcfg, byte_init="random"),
                        rngs=nnx.Rngs(0))
        if lora is not None:
            apply_lora(model, lora, nnx.Rngs(1))
        return model

    return nnx.eval_shape(build)


TRAIN_MODES = ("lora", "full")


def build_retnphi(model_cfg: Mapping[str, Any], progress: bool = True):
    """(model, trainable filter) from a config's model part (see configs/retnphi_tiny.py).

    model_cfg: checkpoint (HF folder: config.json + safetensors [+ tokenizer]), dtype, param_dtype,
    train_mode ("lora": frozen base + adapters/norms/byte tables; "full": every Param), retnphi (RetNPhiConfig
    fields), lora (LoRAConfig fields). The filter goes to nnx.Optimizer(wrt=...) and nnx.grad's DiffState.
    """
    from hqf_jax.nn.lora import LoRAConfig, apply_lora

    m = dict(model_cfg)
    valid = {"checkpoint", "dtype", "param_dtype", "train_mode", "retnphi", "lora"}
    bad = set(m) - valid
    if bad:
        raise RetNPhiConfigError(f"unknown model keys {sorted(bad)}; valid: {sorted(valid)}")
    mode = m.get("train_mode", "lora")
    if mode not in TRAIN_MODES:
        raise RetNPhiConfigError(f"model.train_mode {mode!r} is not one of {TRAIN_MODES}")
    if not m.get("checkpoint"):
        raise RetNPhiConfigError("model.checkpoint is empty; point it at an HF folder (python -m train.token_lm writes one)")
    rcfg = RetNPhiConfig.from_dict(dict(m.get("retnphi", {})))
    model = RetNPhi.from_pretrained(m["checkpoint"], rcfg, dtype=m.get("dtype", "float32"),
                                    param_dtype=m.get("param_dtype"), progress=progress)
    if mode == "full":
        return model, nnx.Param
    apply_lora(model, LoRAConfig.from_dict(dict(m.get("lora", {}))), nnx.Rngs(rcfg.seed + 1))
    return model, rcfg.trainable_filter()
