"""The inference engine for the byte LM (hqf_jax.nn.retnet.RetNetLM): weights prepared once, the prompt
prefilled in the chunkwise form, then a decode loop that generates n bytes in one jitted call.

    eng = Engine(model, dtype="bfloat16", quant=None)          # or Engine.from_run("runs/lm", quant="int8")
    eng.generate([b"def ", b"import"], max_new=200, temperature=0.8, top_p=0.95, seed=0)  # -> list[bytes]

    slots = eng.prefill(prompts, settings)                      # the lower level the server batches with
    slots, ids = eng.decode(slots, 16)                          # 16 bytes per row, (B, 16) on the host

Rows of one batch may have prompts of different lengths: prompts are left-padded, the padding contributes
nothing to the retention state (its keys and values are zeroed) and every row keeps its own position
(``RetentionState.offset`` is (B,)), so each row computes exactly what it would compute alone. A row's
sampling key for its j-th byte is fold_in(PRNGKey(seed), j): its output does not depend on its batch.

The per-layer maths (hqf_jax/infer/step.py) is the model's own modules (norms, projections, group norm,
SwiGLU; quantized layers through hqf_jax.quant) around the retention step, or one of the fused steps.

The shared interface (EngineError, Settings, Slots, encode, ids_to_bytes, ByteGenerator) is in
hqf_jax.infer.generator, the weights' preparation (prepare_model, weight_bytes, array_bytes) in
hqf_jax.infer.prepare; their public names are re-exported here. This file holds the jitted stages and Engine.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.infer import fused
from hqf_jax.infer.generator import (  # noqa: F401 (re-exported: callers import them from engine)
    ByteGenerator, EngineError, Settings, Slots, _pick, encode, ids_to_bytes, pad_rows, take_rows,
)
from hqf_jax.infer.jit_args import Prepared, flat_weights, model_of
from hqf_jax.infer.prepare import (  # noqa: F401 (re-exported: callers import them from engine)
    DTYPES, QUANT_IMPLS, array_bytes, prepare_model, weight_bytes,
)
from hqf_jax.infer.step import forward, init_state, step_logits
from hqf_jax.nn.retnet import RetNetLM
from hqf_jax.ops.constants import NUM_BYTES

# fused*: hqf_jax.infer.fused
DECODE_IMPLS = ("jnp", "pallas", "fused", "fused_pallas", "fused_pallas_split", "fused_gemv")
PADDED_IMPLS = ("fused", "fused_pallas", "fused_pallas_split")  # the steps whose dots XLA emits (dot_rows)
UNQUANTIZED_IMPLS = ("fused_gemv",)  # steps that take bf16/float32 weights only (its GEMV kernels)
AUTO_DOT_ROWS = 8  # fused dots of a one-row step (H200, 2026-11-30: 1.12-1.14x at 125M, 1.28-1.30x at ~1B)
# H200, 2026-11-30, 125M batch 1: jnp 1,261 -> 1,945 bytes/s at 8 rows, fused_pallas 2,083 (dots padded) -> 2,206;
# ~1B: jnp 497 -> 901, fused_pallas 796 -> 1,025; int4 1,738 -> 648 (its batch-1 GEMV layout is slow at 8 rows), so
# quantized engines are not padded; batches 2 and 4 padded: 0.92-0.96x, so batches 2-7 are not
AUTO_MIN_ROWS = 8


# ----------------------------------------------------------------------------- jitted stages


@functools.partial(jax.jit, static_argnames=("graphdef", "vocab_limit"))
def _prefill(graphdef, weights, tokens, lengths, settings, vocab_limit):
    model = model_of(graphdef, weights)
    t = tokens.shape[1]
    valid = jnp.arange(t)[None, :] >= (t - lengths)[:, None]
    logits, state = forward(model, tokens, init_state(model.cfg, lengths - t), valid)
    emitted = jnp.zeros_like(lengths)
    return Slots(state, _pick(logits[:, -1], settings, emitted, vocab_limit), emitted, settings)


@functools.partial(jax.jit, static_argnames=("graphdef", "n", "vocab_limit", "decode_impl", "interpret", "unroll",
                                             "dot_rows", "min_rows"))
def _decode(graphdef, weights, fw, slots: Slots, n, vocab_limit, decode_impl, interpret, unroll=1, dot_rows=1,
            min_rows=1):
    model = model_of(graphdef, weights)
    b = slots.token.shape[0]
    slots, padded = pad_rows(slots, min_rows)  # batch 1 as min_rows rows (faster on a GPU; copies dropped after)

    def body(i, carry):
        state, token, emitted, out = carry
        out = out.at[:, i].set(token)
        logits, state = step_logits(model, fw, token, state, decode_impl, interpret, dot_rows)
        nxt = _pick(logits, slots.settings, emitted + 1, vocab_limit)
        return state, nxt, emitted + 1, out

    out = jnp.zeros((slots.token.shape[0], n), jnp.int32)
    state, token, emitted, out = jax.lax.fori_loop(0, n, body, (slots.state, slots.token, slots.emitted, out),
                                                   unroll=max(1, min(unroll, n)))
    return take_rows(Slots(state, token, emitted, slots.settings), out, b, padded)


@jax.jit
def _put(slots: Slots, new: Slots, rows: jax.Array) -> Slots:
    return jax.tree.map(lambda a, b: a.at[rows].set(b), slots, new)


# ----------------------------------------------------------------------------- the engine


class Engine(ByteGenerator):
    """Byte generation with weights prepared once. ``dtype`` float32 | bfloat16; ``quant`` a hqf_jax.quant
    method (int8, int4, nf4, phi5u8, ...) for the dense layers; ``decode_impl`` jnp | pallas for the
    recurrent step; ``allow_eos`` lets rows sample EOS (bytes only otherwise, never BOS/PAD); ``batch`` the
    decode batch quant_impl "auto" picks the quantized layers' kernel layouts for (any batch still runs);
    ``min_rows`` pads the decode batch to that many rows (copies of row 0, dropped after the call; any decode_impl,
    any weights); None (auto): batch 1 runs as 8 rows on a GPU for unquantized weights (H200, 2026-11-30, 125M: jnp
    1.54x, fused_pallas 1.06x over its padded dots; int4 0.37x, so not for quantized weights), else no padding.
    ``dot_rows`` > 1 pads only the fused steps' XLA dots (fused.padded_rows); None (auto): 8 rows when the step
    runs one row of unquantized weights on a GPU, i.e. with min_rows=1 (1.12-1.14x at 125M, 1.28-1.30x at ~1B;
    0.92-0.95x at 2-8 rows). A quantized fused engine quantizes its concatenated projections whole.
    ``static_args(batch)`` is what one decode call of ``batch`` rows runs with."""

    def __init__(self, model: RetNetLM, *, dtype: str = "bfloat16", quant: str | None = None,
                 quant_impl: str = "auto", decode_impl: str = "jnp", allow_eos: bool = False,
                 prompt_bucket: int = 64, unroll: int = 1, batch: int = 1, dot_rows: int | None = None,
                 min_rows: int | None = None):
        if decode_impl not in DECODE_IMPLS:
            raise EngineError(f"decode_impl {decode_impl!r} is not one of {DECODE_IMPLS}")
        if decode_impl in UNQUANTIZED_IMPLS and quant:
            others = ", ".join(x for x in DECODE_IMPLS if x not in UNQUANTIZED_IMPLS)
            raise EngineError(f"{decode_impl} runs bf16/float32 weights; a quantized engine takes {others}")
        self.model, self.quant_report = prepare_model(model, dtype, quant, quant_impl, batch)
        self.batch = int(batch)
        self.cfg = self.model.cfg
        self.graphdef, self.weights = nnx.split(self.model)
        self._model = Prepared(self.graphdef, self.weights)  # what the jitted stages take (jit_args: cheap calls)
        self._leaves = flat_weights(self.weights)  # beside it, not inside: jit's cache keeps static arguments
        # the fused step reads the projections concatenated (made once here); the model's own kernels are not read.
        # Quantized: the concatenations of the unquantized weights, quantized whole (fused.quantize_fused)
        self.fused_weights = None
        if decode_impl.startswith("fused"):
            self.fused_weights = (fused.quantize_fused(fused.fuse_weights(model), self.model, quant, quant_impl, batch)
                                  if quant else fused.fuse_weights(self.model))
        self.decode_impl = decode_impl
        self.unroll = int(unroll)
        pads = decode_impl in PADDED_IMPLS
        if dot_rows is not None and (dot_rows < 1 or dot_rows > 1 and not pads):
            raise EngineError(f"dot_rows={dot_rows} pads the XLA dots of the fused steps {PADDED_IMPLS}; "
                              f"decode_impl is {decode_impl!r}")
        self.dot_rows = dot_rows
        if min_rows is not None and min_rows < 1:
            raise EngineError(f"min_rows={min_rows}: decode runs at least one row")
        self.min_rows = min_rows
        self.quantized = bool(quant)
        self.interpret = jax.default_backend() == "cpu"
        self.vocab_limit = NUM_BYTES + 2 if allow_eos else NUM_BYTES
        self.prompt_bucket = int(prompt_bucket)

    @classmethod
    def from_run(cls, run: str, step: int | str | None = "best", **kw) -> "Engine":
        """The engine over a run's best-validation step (or ``step``: a number or "latest")."""
        from hqf_jax.trainer import lm_task

        model, _, _ = lm_task.load_run(run, step)
        return cls(model, **kw)

    def weight_bytes(self) -> int:
        """Bytes the decode step reads per step (the fused step reads the concatenated projections instead
        of the per-layer ones)."""
        if self.fused_weights is None:
            return weight_bytes(self.model)
        per = sum(array_bytes(x) for x in jax.tree.leaves(self.fused_weights))
        dup = sum(weight_bytes(getattr(b.retention, n)) for b in self.model.blocks for n in "qkvg")
        dup += sum(weight_bytes(getattr(b.ffn, n)) for b in self.model.blocks for n in ("gate", "up"))
        return weight_bytes(self.model) - dup + per

    def _pad(self, prompts) -> tuple[jax.Array, jax.Array]:
        ids = [encode(p) for p in prompts]
        if not ids:
            raise EngineError("no prompts")
        longest = max(len(x) for x in ids)
        t = -(-longest // self.prompt_bucket) * self.prompt_bucket  # bucketed: few compiled shapes
        tokens = np.zeros((len(ids), t), np.int32)
        for r, x in enumerate(ids):
            tokens[r, t - len(x):] = x
        return jnp.asarray(tokens), jnp.asarray([len(x) for x in ids], jnp.int32)

    def prefill(self, prompts: Sequence[bytes | Sequence[int]], settings: Settings | None = None) -> Slots:
        """Prefill prompts (bytes, or lists of byte ids; BOS is prepended) in the chunkwise form, one call."""
        tokens, lengths = self._pad(prompts)
        settings = settings if settings is not None else Settings.make(len(prompts))
        return _prefill(self._model, self._leaves, tokens, lengths, settings, self.vocab_limit)

    def decode(self, slots: Slots, n: int) -> tuple[Slots, np.ndarray]:
        """n bytes per row in one jitted on-device loop -> (slots after, ids (B, n) on the host)."""
        slots, out = self.decode_device(slots, n)
        return slots, np.asarray(out)

    def decode_device(self, slots: Slots, n: int) -> tuple[Slots, jax.Array]:
        """``decode`` without the copy to the host (for timing)."""
        return _decode(self._model, self._leaves, self.fused_weights, slots, int(n), self.vocab_limit,
                       *self.static_args(slots.token.shape[0]))

    def static_args(self, batch: int) -> tuple:
        """(decode_impl, interpret, unroll, dot_rows, min_rows) of a decode call of ``batch`` rows: the padding
        resolved (auto: see the class docstring; "a GPU" is jax's gpu backend)."""
        gpu = jax.default_backend() == "gpu"
        min_rows = self.min_rows if self.min_rows is not None else (
            AUTO_MIN_ROWS if batch == 1 and gpu and not self.quantized else 1)
        rows = max(batch, min_rows)
        dot_rows = self.dot_rows if self.dot_rows is not None else (
            AUTO_DOT_ROWS if rows == 1 and gpu and self.decode_impl in PADDED_IMPLS and not self.quantized else 1)
        return self.decode_impl, self.interpret, self.unroll, dot_rows, min_rows

    def put(self, slots: Slots, new: Slots, rows: Sequence[int]) -> Slots:
        """Slots with rows ``rows`` replaced by the rows of ``new`` (requests joining a running batch)."""
        return _put(slots, new, jnp.asarray(rows, jnp.int32))

