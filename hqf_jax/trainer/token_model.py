"""The token-LM task's model: a Llama-style decoder (hqf_jax.nn.hf_decoder.HFDecoderLM built from
transformers' LlamaConfig values), its size and training FLOPs, and its export in HF format (config.json +
model.safetensors + tokenizer files) that hqf_jax.nn.hf_loading.load_hf_decoder and transformers load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import nnx

from hqf_jax.errors import ConfigError
from hqf_jax.nn.hf_decoder import DecoderConfig, HFDecoderLM
from hqf_jax.trainer.token_data import save_tokenizer

LLAMA_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "max_position_embeddings", "rope_theta", "rms_norm_eps", "tie_word_embeddings", "hidden_act",
              "initializer_range", "attention_bias", "mlp_bias")


# ---------------------------------------------------------------------- model


def llama_config(model_cfg, tokenizer):
    """transformers.LlamaConfig from the config's model part and the tokenizer's vocabulary and special ids."""
    from transformers import LlamaConfig

    m = dict(model_cfg)
    bad = set(m) - set(LLAMA_KEYS)
    if bad:
        raise ConfigError(f"unknown model keys {sorted(bad)}; valid (LlamaConfig fields): {sorted(LLAMA_KEYS)}")
    if m.get("head_dim") in (None, 0):
        m.pop("head_dim", None)
    return LlamaConfig(**m, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def decoder_config(hf_config, dtype: str = "float32") -> DecoderConfig:
    """Compute in `dtype` (bfloat16 on a GPU), parameters always float32."""
    return DecoderConfig.from_hf(hf_config.to_dict(), dtype=dtype, param_dtype="float32")


def build_decoder(hf_config, seed: int, dtype: str = "float32") -> HFDecoderLM:
    return HFDecoderLM(decoder_config(hf_config, dtype), rngs=nnx.Rngs(seed))


def count_params(model: nnx.Module) -> int:
    return sum(int(v.get_value().size) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))


def decoder_flops_per_token(cfg: DecoderConfig, seq_len: int) -> float:
    """Training FLOPs per token (3x forward): 6 x matmul params (embedding lookup excluded, head included)
    plus causal attention (scores and values, on average seq_len/2 keys per query)."""
    c = cfg
    attn = c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim + c.num_heads * c.head_dim * c.hidden_size
    mlp = 3 * c.hidden_size * c.intermediate_size
    matmul = c.num_layers * (attn + mlp) + c.hidden_size * c.vocab_size
    scores = c.num_layers * c.num_heads * c.head_dim * seq_len  # 2 x (T/2) x hd multiply-adds per query and head
    return 6.0 * matmul + 6.0 * scores


# ---------------------------------------------------------------------- HF export


def save_hf(model: HFDecoderLM, hf_config, tokenizer, folder: str | Path, info: dict | None = None) -> Path:
    """config.json + model.safetensors (HF names = the NNX paths, (out, in) layout) + tokenizer files
    [+ training.json with `info`]. Loads with load_hf_decoder and transformers' AutoModelForCausalLM."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_config.save_pretrained(str(folder))
    tensors = {".".join(str(p) for p in path): np.ascontiguousarray(np.asarray(v.get_value(), np.float32))
               for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    save_tokenizer(tokenizer, folder)
    if info is not None:
        (folder / "training.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    return folder
