"""LoRA and DoRA adapters on the (out, in) `Linear` projections of the HF decoder / RetNPhi.

LoRA:  y = W x + b + s * B A drop(x),             s = alpha / rank, A (r, in) random, B (out, r) zeros
DoRA:  y = m / ||W + s B A||_row * (W + s B A) x + b   (m initialised to ||W||_row, the norm held constant
       in the backward pass as in the DoRA paper / PEFT), so at step 0 both leave the function unchanged.

`apply_lora` swaps every Linear whose dotted path matches one of the target patterns for a LoRALinear that keeps
the same `weight`/`bias` variables (paths unchanged: `...qkv_proj.weight` stays, `...qkv_proj.lora_A` is added).
The default target "auto" stands for every projection of the model's family (FAMILY_TARGETS, read from the
decoder config's model_type): q/k/v/o/gate/up/down on Llama, Mistral and Qwen2; the fused qkv_proj and
gate_up_proj with o_proj and down_proj on Phi-3. A named target that matches no projection is an error (a Llama
name on a Phi-3 model would otherwise silently leave attention and half the MLP without adapters).
Adapter weights are `LoRAParam`, an nnx.Param subclass, so filters can tell them apart.

`TrainableFilter` selects what trains: adapters + any Param whose path has a name containing one of the fragments
(default: norms, byte embedding, byte head). Give it to nnx.Optimizer(model, tx, wrt=filter) and
nnx.grad(..., argnums=nnx.DiffState(0, filter)) so frozen weights never enter gradients or optimizer state.
"""

from __future__ import annotations

import dataclasses
import fnmatch

import jax
import jax.numpy as jnp
from flax import nnx

from hqf_jax.config_checks import dataclass_from_dict
from hqf_jax.nn.hf_decoder import FAMILIES, Linear

AUTO = "auto"  # a target that stands for every projection of the model's family
SPLIT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FUSED_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
FAMILY_TARGETS = {"phi3": FUSED_TARGETS, "llama": SPLIT_TARGETS, "mistral": SPLIT_TARGETS, "qwen2": SPLIT_TARGETS}
assert set(FAMILY_TARGETS) == set(FAMILIES), "every decoder family needs its default LoRA targets"


class LoRAParam(nnx.Param):
    """Adapter weight (lora_A, lora_B, DoRA magnitude)."""


class LoRAConfigError(ValueError):
    """Bad adapter configuration; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    targets: tuple = (AUTO,)  # "auto" (the family's projections), names or fnmatch patterns on dotted paths
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    dora: bool = False
    dtype: str = "float32"  # storage dtype of the adapter weights

    def __post_init__(self):
        if self.rank < 1:
            raise LoRAConfigError(f"lora rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoRAConfigError(f"lora dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise LoRAConfigError("lora targets is empty; name projections such as ('qkv_proj', 'o_proj')")

    def expand(self, family: str | None) -> tuple:
        """targets with "auto" replaced by the family's projection names (FAMILY_TARGETS)."""
        if AUTO not in self.targets:
            return tuple(self.targets)
        if family not in FAMILY_TARGETS:
            raise LoRAConfigError(f"lora target 'auto' needs a decoder family (one of {sorted(FAMILY_TARGETS)}), "
                                  f"got {family!r}; name the targets instead")
        out = [t for t in self.targets if t != AUTO]
        return tuple(FAMILY_TARGETS[family]) + tuple(t for t in out if t not in FAMILY_TARGETS[family])

    def resolved(self, family: str | None) -> "LoRAConfig":
        return dataclasses.replace(self, targets=self.expand(family))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LoRAConfig":
        return dataclass_from_dict(cls, d, LoRAConfigError, "lora", tuples=("targets",))


def _matches(path: str, patterns: tuple) -> bool:
    name = path.rsplit(".", 1)[-1]
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


class LoRALinear(Linear):
    """A Linear with a low-rank (optionally weight-decomposed) adapter; shares the base weight/bias variables."""

    def __init__(self, base: Linear, cfg: LoRAConfig, rngs: nnx.Rngs):
        self.in_features, self.out_features, self.dtype = base.in_features, base.out_features, base.dtype
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.scaling, self.use_dora = cfg.rank, cfg.scaling, cfg.dora
        dt = jnp.dtype(cfg.dtype)
        # A: kaiming-uniform(a=sqrt(5)) as PEFT does, i.e. U(-1/sqrt(in), 1/sqrt(in)); B zeros
        bound = 1.0 / (self.in_features**0.5)
        self.lora_A = LoRAParam(
            jax.random.uniform(rngs.params(), (cfg.rank, self.in_features), dt, -bound, bound)
        )
        self.lora_B = LoRAParam(jnp.zeros((self.out_features, cfg.rank), dt))
        self.magnitude = (
            LoRAParam(jnp.linalg.norm(self.weight[...].astype(jnp.float32), axis=1).astype(dt)) if cfg.dora else None
        )
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs) if cfg.dropout > 0 else None

    def delta_weight(self) -> jnp.ndarray:
        """s * B A in float32, shape (out, in)."""
        return self.scaling * (self.lora_B[...].astype(jnp.float32) @ self.lora_A[...].astype(jnp.float32))

    def _dora_scale(self) -> jnp.ndarray:
        w = self.weight[...].astype(jnp.float32) + self.delta_weight()
        norm = jax.lax.stop_gradient(jnp.linalg.norm(w, axis=1))
        return self.magnitude[...].astype(jnp.float32) / norm

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        result = self.base(x)
        xd = self.dropout(x) if self.dropout is not None else x
        xd = xd.astype(self.dtype)
        lora = jnp.einsum("...i,ri->...r", xd, self.lora_A[...].astype(self.dtype))
        lora = jnp.einsum("...r,or->...o", lora, self.lora_B[...].astype(self.dtype)) * self.scaling
        if not self.use_dora:
            return result + lora
        scale = self._dora_scale().astype(self.dtype)
        base_x = jnp.einsum("...i,oi->...o", xd, self.weight[...].astype(self.dtype))
        return result + (scale - 1) * base_x + scale * lora

    def merged_weight(self) -> jnp.ndarray:
        """The single (out, in) weight that equals this layer's function, in the base weight's dtype."""
        w = self.weight[...].astype(jnp.float32) + self.delta_weight()
        if self.use_dora:
            w = self._dora_scale()[:, None] * w
        return w.astype(self.weight[...].dtype)


def _parent_and_key(model: nnx.Module, path: tuple):
    parent = model
    for p in path[:-1]:
        parent = parent[p] if isinstance(p, int) else getattr(parent, p)
    return parent, path[-1]


def _is_lora_at(model: nnx.Module, path: tuple) -> bool:
    parent, key = _parent_and_key(model, path)
    return isinstance(parent[key] if isinstance(key, int) else getattr(parent, key), LoRALinear)


def _set_child(parent, key, value) -> None:
    if isinstance(key, int):
        parent[key] = value
    else:
        setattr(parent, key, value)


def linear_paths(model: nnx.Module, patterns: tuple, cls=Linear) -> list[tuple]:
    return [
        path
        for path, m in nnx.iter_modules(model)
        if isinstance(m, cls) and path and _matches(".".join(map(str, path)), patterns)
    ]


def model_family(model: nnx.Module) -> str | None:
    """The decoder family (config.json's model_type) of an HFDecoderLM or RetNPhi, else None."""
    return getattr(getattr(model, "cfg", None), "family", None)


def apply_lora(model: nnx.Module, cfg: LoRAConfig, rngs: nnx.Rngs) -> list[str]:
    """Wrap every matching Linear in place; returns the dotted paths wrapped.

    Raises LoRAConfigError when any one target matches no projection (or all matches are already wrapped).
    """
    family = model_family(model)
    targets = cfg.expand(family)
    every = [".".join(map(str, p)) for p, m in nnx.iter_modules(model) if isinstance(m, Linear) and p]
    missing = [t for t in targets if not any(_matches(path, (t,)) for path in every)]
    if missing:
        names = sorted({path.rsplit(".", 1)[-1] for path in every})
        default = f"; targets=['auto'] wraps {list(FAMILY_TARGETS[family])}" if family in FAMILY_TARGETS else ""
        raise LoRAConfigError(f"lora targets {missing} match no projection of this {family or 'model'}; "
                              f"valid names: {names}{default}")
    paths = [p for p in linear_paths(model, targets) if not _is_lora_at(model, p)]
    if not paths:
        raise LoRAConfigError(f"lora targets {list(targets)} are all wrapped already; merge() before applying again")
    for path in paths:
        parent, key = _parent_and_key(model, path)
        base = parent[key] if isinstance(key, int) else getattr(parent, key)
        _set_child(parent, key, LoRALinear(base, cfg, rngs))
    return [".".join(map(str, p)) for p in paths]


def lora_paths(model: nnx.Module) -> list[str]:
    return [".".join(map(str, p)) for p, m in nnx.iter_modules(model) if isinstance(m, LoRALinear)]


def merge(model: nnx.Module) -> int:
    """Fold every adapter into its base weight in place (LoRALinear -> Linear); returns how many were merged."""
    n = 0
    for path, m in list(nnx.iter_modules(model)):
        if isinstance(m, LoRALinear):
            lin = Linear.from_weights(m.merged_weight(), m.bias, m.dtype)
            parent, key = _parent_and_key(model, path)
            _set_child(parent, key, lin)
            n += 1
    return n


@dataclasses.dataclass(frozen=True)
class TrainableFilter:
    """nnx filter: adapter weights, plus Params whose path has a name containing one of `name_fragments`."""

    name_fragments: tuple = ("norm", "byte_embed", "byte_head")

    def __call__(self, path, value) -> bool:
        if isinstance(value, LoRAParam):
            return True
        if not isinstance(value, nnx.Param):
            return False
        return any(isinstance(p, str) and any(f in p for f in self.name_fragments) for p in path)


def frozen_filter(trainable: TrainableFilter) -> nnx.filterlib.Filter:
    return nnx.All(nnx.Param, nnx.Not(trainable))


def count_params(model: nnx.Module, wrt) -> int:
    return sum(int(v.get_value().size) for _, v in nnx.to_flat_state(nnx.state(model, wrt)))
