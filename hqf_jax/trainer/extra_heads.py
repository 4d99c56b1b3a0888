"""Train only a model's extra byte heads (the byte LM's model.extra_heads, RetNPhi's retnphi.extra_heads) on a
byte array with everything else frozen: ``steps`` Adam steps in one jitted scan (windows drawn on device), the
loss the trainer uses (lm_task.next_byte_loss: each head against the byte j + 1 places after the main head's),
and each head's bits per byte on held-out windows before and after. The base is a frozen input, so no gradient
flows through it (only the heads' matmuls are differentiated).

    report = fit_extra_heads(model, train_bytes, valid_bytes, steps=300, batch=16, seq_len=256, lr=1e-3)
    report["valid_bpb_before"], report["valid_bpb_after"]    # per head, held out
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hqf_jax.trainer.lm_task import next_byte_loss

HEADS = nnx.All(nnx.Param, nnx.PathContains("extra_heads"))


def _windows(data, key, batch: int, seq_len: int):
    starts = jax.random.randint(key, (batch,), 0, data.shape[0] - seq_len - 1)
    return jax.vmap(lambda s: jax.lax.dynamic_slice(data, (s,), (seq_len + 1,)))(starts).astype(jnp.int32)


def _loss(graphdef, heads, rest, x):
    model = nnx.merge(graphdef, heads, rest)
    loss, metrics = next_byte_loss(model, {"inputs": x[:, :-1], "targets": x[:, 1:]}, None, extra_heads_weight=1.0)
    head_bpb = jnp.stack([metrics[f"extra_head{j + 1}_bpb"] for j in range(len(model.extra_heads))])
    return loss, (head_bpb, metrics["bpb"])


@functools.partial(jax.jit, static_argnames=("graphdef", "tx", "steps", "batch", "seq_len"), donate_argnums=(1, 2))
def _train(graphdef, heads, opt_state, rest, data, key, tx, steps, batch, seq_len):
    def body(carry, i):
        heads, opt_state = carry
        x = _windows(data, jax.random.fold_in(key, i), batch, seq_len)
        (_, (head_bpb, _)), grads = jax.value_and_grad(_loss, argnums=1, has_aux=True)(graphdef, heads, rest, x)
        updates, opt_state = tx.update(grads, opt_state, heads)
        return (optax.apply_updates(heads, updates), opt_state), head_bpb.mean()

    (heads, opt_state), curve = jax.lax.scan(body, (heads, opt_state), jnp.arange(steps))
    return heads, opt_state, curve


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _score(graphdef, heads, rest, windows):
    return jax.lax.map(lambda x: _loss(graphdef, heads, rest, x[None])[1], windows)


def held_out_windows(valid: np.ndarray, seq_len: int, n: int) -> np.ndarray:
    """n windows of seq_len + 1 bytes evenly spaced over the held-out bytes."""
    if len(valid) < seq_len + 2:
        raise ValueError(f"held-out bytes ({len(valid)}) shorter than one window of {seq_len + 1}")
    starts = np.linspace(0, len(valid) - seq_len - 1, n).astype(np.int64)
    return np.stack([valid[s:s + seq_len + 1] for s in starts]).astype(np.int32)


def fit_extra_heads(model: nnx.Module, train: np.ndarray, valid: np.ndarray, *, steps: int, batch: int = 16,
                    seq_len: int = 256, lr: float = 1e-3, seed: int = 0, eval_windows: int = 16) -> dict:
    """Train ``model``'s extra heads in place (see the module docstring); returns the report."""
    if not getattr(model, "extra_heads", None):
        raise ValueError("the model has no extra heads (model.extra_heads / model.retnphi.extra_heads = k >= 1)")
    graphdef, heads, rest = nnx.split(model, HEADS, ...)
    windows = jnp.asarray(held_out_windows(valid, seq_len, eval_windows))
    before, main_bpb = (np.asarray(v).mean(0) for v in _score(graphdef, heads, rest, windows))
    tx = optax.adam(lr)
    opt_state = tx.init(heads)
    data = jnp.asarray(np.asarray(train, np.uint8))
    t0 = time.perf_counter()
    heads, _, curve = _train(graphdef, heads, opt_state, rest, data, jax.random.PRNGKey(seed), tx, int(steps),
                             int(batch), int(seq_len))
    curve = np.asarray(curve)
    seconds = time.perf_counter() - t0  # compile included
    nnx.update(model, heads)
    after = np.asarray(_score(graphdef, heads, rest, windows)[0]).mean(0)
    k = max(1, min(10, steps // 4))
    return {"steps": int(steps), "batch": int(batch), "seq_len": int(seq_len), "lr": float(lr),
            "train_head_bpb_first": float(curve[:k].mean()), "train_head_bpb_last": float(curve[-k:].mean()),
            "valid_bpb_before": before.tolist(), "valid_bpb_after": after.tolist(),
            "valid_main_bpb": float(main_bpb), "seconds": seconds}
