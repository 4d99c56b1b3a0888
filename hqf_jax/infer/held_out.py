"""An engine against a run's held-out bytes (what bench.generate reports beside speed): the bits per byte of the
engine's prepared weights (bf16 / quantized: the cost of a weight format), the held-out stream itself, and windows of
it as prompts (what speculative decoding's acceptance is measured on). Without the data on this machine each says so
and the caller goes on without it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax.infer.engine import Engine


def held_out_bpb(engine: Engine, data: np.ndarray, seq_len: int) -> float:
    """Bits per byte of the engine's prepared weights on ``data`` (rows of seq_len + 1 bytes), chunkwise form."""
    from flax import nnx

    from hqf_jax.infer.step import forward, init_state

    rows = data[: len(data) // (seq_len + 1) * (seq_len + 1)].reshape(-1, seq_len + 1).astype(np.int32)

    @jax.jit
    def nll(weights, toks):
        model = nnx.merge(engine.graphdef, weights)
        b = toks.shape[0]
        logits, _ = forward(model, toks[:, :-1], init_state(model.cfg, jnp.zeros((b,), jnp.int32)))
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        return -jnp.take_along_axis(lp, toks[:, 1:, None], -1).sum()

    total = sum(float(nll(engine.weights, jnp.asarray(rows[i:i + 8]))) for i in range(0, len(rows), 8))
    return total / (rows.shape[0] * seq_len) / np.log(2)


def held_out_bytes(cfg, n: int) -> np.ndarray | None:
    try:
        from hqf_jax.trainer import lm_task

        return np.asarray(lm_task.load_corpus(cfg.data).stream("valid")[:n])
    except Exception as e:  # noqa: BLE001 - the bench still runs; the table says bpb is missing
        print(f"held-out data unavailable ({type(e).__name__}: {e}); no bpb column")
        return None


def held_out_prompts(cfg, n: int, length: int = 64) -> list[bytes]:
    """n windows of ``length`` held-out bytes of the run, evenly spaced (what acceptance is measured on); a fixed
    text when the data is not on this machine."""
    try:
        from hqf_jax.trainer import lm_task
        from hqf_jax.trainer.extra_heads import held_out_windows

        windows = held_out_windows(lm_task.load_corpus(cfg.data).stream("valid"), length - 1, n)
        return [bytes(w.astype(np.uint8).tolist()) for w in windows]
    except Exception as e:  # noqa: BLE001 - the bench still runs; the table says where prompts came from
        print(f"held-out data unavailable ({type(e).__name__}: {e}); prompts are a fixed text")
        return [b"The quick brown fox jumps over the lazy dog. " * 2] * n
