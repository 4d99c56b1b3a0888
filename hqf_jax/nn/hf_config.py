"""The HF decoder's configuration: DecoderConfig read from a config.json (families, activations, dtypes, rope).

Supported families, the `hidden_act` names (transformers' names with transformers' meaning) and the rope
formats (transformers<5 rope_scaling and transformers 5 rope_parameters) are described in
hqf_jax.nn.hf_decoder's docstring; the modules built from this config are in hqf_jax.nn.hf_layers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

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

