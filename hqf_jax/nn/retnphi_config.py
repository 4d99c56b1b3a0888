"""RetNPhi's conversion configuration (RetNPhiConfig: form, position, decays, group norm, gate, byte init,
remat, trainable names, extra heads) and its error; what each field means is in hqf_jax.nn.retnphi's docstring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from hqf_jax.config_checks import dataclass_from_dict
from hqf_jax.nn.lora import TrainableFilter

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
        return dataclass_from_dict(cls, d, RetNPhiConfigError, "retnphi", tuples=("trainable",))

    def trainable_filter(self) -> TrainableFilter:
        """Adapters + Params named by `trainable` (default: norms (RMSNorms and the retention GroupNorm), byte
        embedding, byte head) (+ the new gate) (+ the extra byte heads)."""
        extra = (("ret_gate",) if self.gate == "swish" else ()) + (("extra_heads",) if self.extra_heads else ())
        return TrainableFilter(tuple(self.trainable) + extra)
