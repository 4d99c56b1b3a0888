"""What the decode benchmarks share (bench.generate, bench.decode_profile): the model they time (a config's
random weights, or a run's trained ones), an engine's slots after one warm-up decode call, and the op count
of one decode step from the compiled loop's HLO."""

from __future__ import annotations

import jax

from hqf_jax import cli
from hqf_jax.infer.engine import Engine, Settings, _decode
from hqf_jax.infer.hlo_count import loop_body_ops


def build_model(config: str, overrides=(), run: str | None = None, heads: int | None = None):
    """(model, cfg, source): a train.lm run's weights when ``run`` is given, else ``config`` (with
    ``key=value`` overrides, and ``model.extra_heads=heads`` when heads is given) with random weights (speed
    does not depend on their values)."""
    from hqf_jax.trainer import lm_task

    if run:
        model, cfg, _ = lm_task.load_run(run)
        return model, cfg, run
    cfg = cli.load_config_file(config)
    cfg = cli.apply_overrides(cfg, list(overrides) + ([f"model.extra_heads={heads}"] if heads is not None else []))
    return lm_task.build_model(cfg), cfg, config


def warm_slots(engine: Engine, batch: int, steps: int, prompt: bytes = b"The quic"):
    """Slots of ``batch`` rows (sampling at temperature 1, top-p 0.95) after prefill and one decode call of
    ``steps`` steps, finished: the decode loop is compiled and the next calls time only the decode."""
    slots = engine.prefill([prompt] * batch, Settings.make(batch, 0, temperature=1.0, top_p=0.95))
    slots, out = engine.decode_device(slots, steps)
    jax.block_until_ready(out)
    return slots


def ops_per_step(engine: Engine) -> int:
    """Non-trivial top-level ops of one decode step (the compiled loop body on this device) at batch 1."""
    slots = engine.prefill([b"ab"], Settings.make(1, 0, temperature=1.0, top_p=0.95))
    _, interpret, _, dot_rows, min_rows = engine.static_args(1)
    low = _decode.lower(engine.graphdef, engine.weights, engine.fused_weights, slots, 8, engine.vocab_limit,
                        engine.decode_impl, interpret, 1, dot_rows, min_rows)
    return int(sum(loop_body_ops(low.compile().as_text()).values()))
