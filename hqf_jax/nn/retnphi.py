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
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.nn.hf_decoder import MLP, Attention, DecoderConfig, Embedding, HFDecoderLM, Linear, RMSNorm
from hqf_jax.nn.lora import TrainableFilter
from hqf_jax.ops import retention as ret
from hqf_jax.ops import rope as rope_ops
from hqf_jax.ops.constants import BOS_ID, BYTE_VOCAB_SIZE, EOS_ID, NUM_BYTES, PAD_ID

FORMS = ("parallel", "chunkwise", "recurrent", "pallas")
POSITIONS = ("hf", "xpos", "none")
GATES = ("none", "swish")
BYTE_INITS = ("random", "tokens")


class RetNPhiConfigError(ValueError):
    """Bad conversion configuration; the message lists the valid values."""


@dataclasses.dataclass(frozen=True)
class RetNPhiConfig:
    form: str = "chunkwise"  # training / scoring form: parallel | chunkwise | pallas
    chunk_size: int = 64
    position: str = "hf"
    rope_context: int | None = None  # sequence length the RoPE frequencies are chosen for (None: original max)
    xpos_scale_base: float = 512.0
    gamma_exp_first: float = -5.0
    gamma_exp_last: float = -12.0
    group_norm: bool = True
    group_norm_eps: float = 1e-6
    gate: str = "none"
    byte_init: str = "tokens"  # random | tokens (needs the folder's tokenizer)
    byte_init_std: float | None = None  # random init std (None: std of the token embedding)
    remat: bool = False  # recompute each block in the backward pass (nnx.remat): keeps only block inputs
    seed: int = 0
    # lora mode: besides the adapters, Params whose path has a name containing one of these are trained
    # (the origin recipe thaws only ("post_attention_layernorm", "byte_embed", "byte_head"))
    trainable: tuple = ("norm", "byte_embed", "byte_head")
    # multi-byte prediction (as the byte LM's model.extra_heads): k extra byte heads on the final normed hidden
    # state, head j predicting byte t+2+j; trained with the adapters, they draft for self-speculative decoding
    extra_heads: int = 0

    def __post_init__(self):
        for name, value, valid in (
            ("form", self.form, FORMS),
            ("position", self.position, POSITIONS),
            ("gate", self.gate, GATES),
            ("byte_init", self.byte_init, BYTE_INITS),
        ):
            if value not in valid:
                raise RetNPhiConfigError(f"retnphi.{name} {value!r} is not one of {valid}")
        if self.extra_heads < 0:
            raise RetNPhiConfigError(f"retnphi.extra_heads must be >= 0 (0 = none); got {self.extra_heads}")
        if self.form == "recurrent":
            raise RetNPhiConfigError("retnphi.form is the training form (parallel, chunkwise, pallas); step() is recurrent")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RetNPhiConfig":
        valid = {f.name for f in dataclasses.fields(cls)}
        bad = set(d) - valid
        if bad:
            raise RetNPhiConfigError(f"unknown retnphi keys {sorted(bad)}; valid: {sorted(valid)}")
        d = dict(d)
        if "trainable" in d:
            d["trainable"] = tuple(d["trainable"])
        return cls(**d)

    def trainable_filter(self) -> TrainableFilter:
        """Adapters + Params named by `trainable` (default: norms (RMSNorms and the retention GroupNorm), byte
        embedding, byte head) (+ the new gate) (+ the extra byte heads)."""
        extra = (("ret_gate",) if self.gate == "swish" else ()) + (("extra_heads",) if self.extra_heads else ())
        return TrainableFilter(tuple(self.trainable) + extra)


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


# ---------------------------------------------------------------------- byte rows from the token model

# files that hold a vocabulary (tokenizer_config.json alone does not: transformers then builds an empty one)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt", "tiktoken.model")
_NO_TOKENIZER_FIX = "or set model.retnphi.byte_init=random"


def load_tokenizer(folder: str):
    """The checkpoint folder's tokenizer for byte_init='tokens'; RetNPhiConfigError (one line) when the folder
    has none, it does not load, or it maps no token to bytes (the 'token' init would silently be random)."""
    if not any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        raise RetNPhiConfigError(f"byte_init='tokens' needs the checkpoint's tokenizer and {folder} has none (no "
                                 f"{', '.join(TOKENIZER_FILES[:3])}); save it there with tokenizer.save_pretrained "
                                 f"{_NO_TOKENIZER_FIX}")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # transformers' messages span lines
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise RetNPhiConfigError(f"the tokenizer in {folder} does not load ({type(e).__name__}: {first}); "
                                 f"re-save it with tokenizer.save_pretrained {_NO_TOKENIZER_FIX}") from None
    check_tokenizer(tokenizer, folder)
    return tokenizer


def check_tokenizer(tokenizer, folder: str | None = None) -> None:
    """Refuse a tokenizer none of whose tokens map to bytes (empty vocabulary, specials only)."""
    if not any(token_bytes(tokenizer)):
        where = f" in {folder}" if folder else ""
        raise RetNPhiConfigError(f"the tokenizer{where} is empty (vocabulary {len(tokenizer)}, no token maps to bytes), "
                                 f"so byte_init='tokens' would be random; save the real tokenizer beside the weights "
                                 f"{_NO_TOKENIZER_FIX}")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map used by byte-level BPE tokenizers."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def token_bytes(tokenizer) -> list[bytes | None]:
    """The byte string of every token id (None for special tokens and unmappable ones).

    Byte-level BPE: the token string through GPT-2's unicode->byte table. SentencePiece: '▁' is a space and
    <0xNN> is byte NN. Anything else: its UTF-8 encoding.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and "ByteLevel" in repr(backend.decoder)
    inverse = {ch: b for b, ch in _bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    out: list[bytes | None] = []
    for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if tok is None or i in special:
            out.append(None)
        elif byte_level:
            out.append(bytes(inverse[ch] for ch in tok) if all(ch in inverse for ch in tok) else None)
        elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            out.append(bytes([int(tok[3:5], 16)]))
        else:
            out.append(tok.replace("\u2581", " ").encode("utf-8") or None)
    return out


def _token_tables(decoder: HFDecoderLM) -> tuple[np.ndarray, np.ndarray]:
    emb = np.asarray(decoder.model.embed_tokens.weight[...].astype(jnp.float32))
    head = emb if decoder.lm_head is None else np.asarray(decoder.lm_head.weight[...].astype(jnp.float32))
    return emb, head


def random_byte_rows(decoder: HFDecoderLM, rcfg: RetNPhiConfig) -> tuple[np.ndarray, np.ndarray]:
    emb, head = _token_tables(decoder)
    rng = np.random.default_rng(rcfg.seed)
    e_std = rcfg.byte_init_std or float(emb.std())
    h_std = rcfg.byte_init_std or float(head.std())
    d = emb.shape[1]
    return (rng.normal(0, e_std, (BYTE_VOCAB_SIZE, d)).astype(np.float32),
            rng.normal(0, h_std, (BYTE_VOCAB_SIZE, d)).astype(np.float32))


def byte_rows_from_tokens(decoder: HFDecoderLM, tokenizer, rcfg: RetNPhiConfig) -> tuple[np.ndarray, np.ndarray]:
    """(embedding rows, head rows), each (BYTE_VOCAB_SIZE, D): per byte, the mean over tokens starting with it."""
    emb, head = _token_tables(decoder)
    rand_e, rand_h = random_byte_rows(decoder, rcfg)
    out_e, out_h = rand_e.copy(), rand_h.copy()
    groups: list[list[int]] = [[] for _ in range(NUM_BYTES)]
    for i, bs in enumerate(token_bytes(tokenizer)):
        if bs and i < emb.shape[0]:
            groups[bs[0]].append(i)
    for b, ids in enumerate(groups):
        if ids:
            out_e[b], out_h[b] = emb[ids].mean(0), head[ids].mean(0)
    for byte_id, tok_id in ((BOS_ID, tokenizer.bos_token_id), (EOS_ID, tokenizer.eos_token_id), (PAD_ID, tokenizer.pad_token_id)):
        if tok_id is not None and tok_id < emb.shape[0]:
            out_e[byte_id], out_h[byte_id] = emb[tok_id], head[tok_id]
    return out_e, out_h


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
