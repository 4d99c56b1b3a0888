"""Timing the shared train step of a byte LM, for the benchmarks (bench/lm.py, bench/long_context.py).

Every figure is wall time around N jitted calls after two untimed ones (compile, warm-up), with
``block_until_ready`` only at the end, so dispatch overlaps device work. FLOPs per byte come from
``lm_task.model_flops_per_byte`` (the same count as the trainer's TFLOP/s and MFU).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.nn.retnet import count_params
from hqf_jax.trainer.lm_task import model_flops_per_byte, next_byte_loss
from hqf_jax.trainer.loop import _train_state, make_train_step
from hqf_jax.trainer.optim import make_optimizer


def time_train_step(model: nnx.Module, train_cfg, seq_len: int, batch: int, steps: int) -> dict:
    """Step time of ``model`` (RetNet or transformer) on random bytes: step_ms, bytes_per_s, model tflops,
    step_gib (arguments + XLA temporaries, from the compiler), params and the last loss."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, schedule = make_optimizer(train_cfg)
    state = _train_state(params, tx.init(params), 0)
    data = np.random.default_rng(0).integers(0, 256, (batch, seq_len + 1), dtype=np.int32)
    b = {"inputs": jnp.asarray(data[:, :-1]), "targets": jnp.asarray(data[:, 1:])}
    step = jax.jit(make_train_step(next_byte_loss, graphdef, tx, schedule, 0), donate_argnums=(0,))
    step = step.lower(state, rest, b).compile()
    ma = step.memory_analysis()
    step_gib = ((ma.argument_size_in_bytes + ma.temp_size_in_bytes) / 2**30) if ma is not None else float("nan")
    state, m = step(state, rest, b)  # warm-up
    state, m = step(state, rest, b)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, rest, b)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t) / steps
    bytes_per_s = batch * seq_len / dt
    tflops = model_flops_per_byte(model.cfg, seq_len) * bytes_per_s / 1e12
    return {"step_ms": dt * 1e3, "bytes_per_s": bytes_per_s, "tflops": tflops,
            "step_gib": step_gib, "params": count_params(model), "loss": float(m["loss"])}
