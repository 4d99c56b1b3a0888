"""The engine for any byte model with the byte-LM interface (``model(tokens, state, return_state=True)``,
``model.init_state(B)``, ``model.step(token, state)``): RetNPhi (hqf_jax.nn.retnphi) and other recurrent
byte models that are not the RetNet byte LM. Parameters cast once, the prompt prefilled in the model's
training form, then n bytes per row in one jitted on-device loop with the engine's per-row sampling
(Settings, Slots and keys as hqf_jax.infer.generator: a row's j-th byte uses fold_in(PRNGKey(seed), j)).

    eng = RecurrentEngine(retnphi, dtype="bfloat16")
    eng.generate([b"def ", b"clas"], max_new=200, temperature=0.8)     # prompts of one length per call
    RecurrentEngine(retnphi, quant="int4", batch=8)                    # dense layers quantized once (as Engine)

Prompts of one call must have the same length (the model's own prefill has no left padding); the RetNet
byte LM's Engine takes ragged batches.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.infer.generator import ByteGenerator, EngineError, Settings, Slots, _pick, encode, pad_rows, take_rows
from hqf_jax.infer.prepare import DTYPES, array_bytes
from hqf_jax.ops.constants import NUM_BYTES


@functools.partial(jax.jit, static_argnames=("graphdef", "vocab_limit"))
def _prefill(graphdef, weights, tokens, settings, vocab_limit):
    model = nnx.merge(graphdef, weights)
    logits, state = model(tokens, model.init_state(tokens.shape[0]), return_state=True)
    emitted = jnp.zeros((tokens.shape[0],), jnp.int32)
    return Slots(state, _pick(logits[:, -1], settings, emitted, vocab_limit), emitted, settings)


@functools.partial(jax.jit, static_argnames=("graphdef", "n", "vocab_limit", "min_rows"))
def _decode(graphdef, weights, slots: Slots, n, vocab_limit, min_rows=1):
    model = nnx.merge(graphdef, weights)
    b = slots.token.shape[0]
    slots, padded = pad_rows(slots, min_rows)

    def body(i, carry):
        state, token, emitted, out = carry
        out = out.at[:, i].set(token)
        logits, state = model.step(token, state)
        return state, _pick(logits, slots.settings, emitted + 1, vocab_limit), emitted + 1, out

    out = jnp.zeros((slots.token.shape[0], n), jnp.int32)
    state, token, emitted, out = jax.lax.fori_loop(0, n, body, (slots.state, slots.token, slots.emitted, out))
    return take_rows(Slots(state, token, emitted, slots.settings), out, b, padded)


def cast_params(model: nnx.Module, dtype: str) -> nnx.Module:
    """A copy of ``model`` with its floating parameters stored in ``dtype`` (made once, for inference)."""
    if dtype not in DTYPES:
        raise EngineError(f"engine dtype {dtype!r} is not one of {DTYPES}")
    gd, p, rest = nnx.split(model, nnx.Param, ...)
    wdt = jnp.dtype(dtype)
    p = jax.tree.map(lambda x: x.astype(wdt) if jnp.issubdtype(x.dtype, jnp.floating) else x, p)
    return nnx.merge(gd, p, rest)


class RecurrentEngine(ByteGenerator):
    """Byte generation for any model with the byte-LM interface; see the module docstring."""

    def __init__(self, model: nnx.Module, *, dtype: str | None = "bfloat16", allow_eos: bool = False,
                 quant: str | None = None, quant_impl: str = "auto", batch: int = 1, min_rows: int = 1):
        """quant: a hqf_jax.quant method for the dense layers (adapters merged first; quantize_model: the head and
        small layers stay), its kernels picked by quant_impl ("auto": per layer for decode batch ``batch``, as
        Engine); min_rows: decode batches padded to that many rows, as Engine's (default 1 here: RetNPhi ~1B at
        batch 1 measured 0.98x padded to 8 rows, H200, 2026-11-30)."""
        if min_rows < 1:
            raise EngineError(f"min_rows={min_rows}: decode runs at least one row")
        self.min_rows = int(min_rows)
        for name in ("init_state", "step"):
            if not callable(getattr(model, name, None)):
                raise EngineError(f"{type(model).__name__} has no {name}(): not a recurrent byte model")
        self.model = cast_params(model, dtype) if dtype else model
        self.quant_report = {}
        if quant:
            from hqf_jax.quant.model import quantize_model

            from hqf_jax.nn.lora import merge

            if self.model is model:  # merge and quantize_model change layers in place: never the caller's model
                self.model = nnx.merge(*nnx.split(model))
            merge(self.model)  # LoRA / DoRA adapters folded into their base weights, then those are quantized
            self.model, self.quant_report = quantize_model(self.model, quant, impl=quant_impl, batch=batch)
        self.graphdef, self.weights = nnx.split(self.model)
        self.vocab_limit = NUM_BYTES + 2 if allow_eos else NUM_BYTES

    def weight_bytes(self) -> int:
        return int(sum(array_bytes(x) for x in jax.tree.leaves(self.weights)))

    def prefill(self, prompts: Sequence[bytes | Sequence[int]], settings: Settings | None = None) -> Slots:
        ids = [encode(p) for p in prompts]
        if not ids or len({len(x) for x in ids}) != 1:
            raise EngineError("RecurrentEngine.prefill takes one or more prompts of one length")
        settings = settings if settings is not None else Settings.make(len(ids))
        return _prefill(self.graphdef, self.weights, jnp.asarray(np.stack(ids)), settings, self.vocab_limit)

    def decode_device(self, slots: Slots, n: int) -> tuple[Slots, jax.Array]:
        return _decode(self.graphdef, self.weights, slots, int(n), self.vocab_limit, self.min_rows)

    def decode(self, slots: Slots, n: int) -> tuple[Slots, np.ndarray]:
        slots, out = self.decode_device(slots, n)
        return slots, np.asarray(out)
