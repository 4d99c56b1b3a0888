"""The optimizer every track shares: AdamW, linear warmup then cosine decay, global-norm clipping."""

from __future__ import annotations

import optax

from hqf_jax.errors import ConfigError


def lr_schedule(train_cfg) -> optax.Schedule:
    steps = int(train_cfg.steps)
    if steps < 1:
        raise ConfigError(f"train.steps={train_cfg.steps}: give a positive number of steps")
    if steps == 1:  # nothing to warm up or decay: the one step runs at the peak rate
        return optax.constant_schedule(train_cfg.lr)
    warmup = min(int(train_cfg.warmup_steps), steps - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=train_cfg.lr, warmup_steps=max(warmup, 1),
        decay_steps=steps, end_value=train_cfg.lr * train_cfg.min_lr_ratio,
    )


def make_optimizer(train_cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = lr_schedule(train_cfg)
    tx = optax.chain(
        optax.clip_by_global_norm(train_cfg.grad_clip),
        optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2, weight_decay=train_cfg.weight_decay),
    )
    return tx, schedule
