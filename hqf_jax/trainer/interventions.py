"""The training chamber: interventions that carry a run on past the point where validation bpb
turns up, without re-initialising it. One hook (``Chamber``) for the shared loop's
``Task.interventions``; it is called after every step as ``hook(step, state, writer, last)``.

Interventions (``chamber.interventions``, comma separated, applied in this order when triggered):

* ``ema_swap``       replace the weights by their running average (needs ``ema``).
* ``shrink_perturb`` theta <- shrink * theta + perturb * theta_fresh, theta_fresh a new initialisation
                     (Ash & Adams 2020); matrices only unless ``sp_all``; Adam moments reset if
                     ``reset_moments``.
* ``noise``          theta <- theta + noise_std * rms(theta) * N(0, 1), per tensor (matrices only).
* ``rewarm``         learning-rate re-warming: for ``rewarm_warmup`` steps the effective lr rises
                     linearly from the schedule's value to ``rewarm_peak * train.lr``, then falls
                     back to the schedule along a half cosine over ``rewarm_decay`` steps. Done by
                     scaling each step's whole AdamW update by k = lr_wanted / lr_schedule, which is
                     exactly training with that lr (clipping acts on gradients, Adam's moments do not
                     see the lr, weight decay is scaled by the lr in AdamW).
* ``ema``            not a trigger: keep an exponential (``ema_kind=ema``, ``ema_decay``) or uniform
                     (``ema_kind=uniform``) average of the weights from ``ema_start``, scored at every
                     eval as ``ema_valid_bpb``; ``ema_swap_at_end`` puts it into the final state.

Triggers (``chamber.trigger``): ``plateau`` fires when the validation metric has not improved by
``min_delta`` for ``patience`` evals (at most ``max_triggers`` times, ``cooldown`` evals apart);
``steps`` fires at ``at_steps``. A ``plateau`` event is logged whatever the interventions, so a
plain run (``interventions="none"``) shows where early stopping would have stopped it. Every
intervention is logged as an event in metrics.jsonl and tensorboard.

Resume: the chamber's host state (plateau watch, rewarm windows, the averaged weights) is saved
beside each checkpoint in ``<workdir>/chamber/<step>.json|.npz`` and read back when the loop resumes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hqf_jax.errors import ConfigError

KINDS = ("none", "ema", "ema_swap", "shrink_perturb", "noise", "rewarm")
TRIGGERS = ("plateau", "steps")
STATE_DIR = "chamber"


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        interventions="none", trigger="plateau", metric="valid_bpb", at_steps=(0,),
        patience=2, min_delta=0.0, cooldown=2, max_triggers=3,
        shrink=0.6, perturb=0.1, sp_all=False, reset_moments=True,
        noise_std=0.05,
        rewarm_peak=1.0, rewarm_warmup=20, rewarm_decay=200,
        ema_kind="ema", ema_decay=0.98, ema_start=0, ema_swap_at_end=False,
        seed=1234,
    ))


# ------------------------------------------------------------------------------- pure pieces


def shrink_perturb(params, fresh, shrink: float, perturb: float, all_leaves: bool = False):
    """shrink * theta + perturb * fresh on matrices (ndim >= 2), or on every leaf with ``all_leaves``."""
    return jax.tree.map(lambda p, f: (shrink * p + perturb * f).astype(p.dtype) if all_leaves or p.ndim >= 2 else p,
                        params, fresh)


def add_noise(params, key, std: float):
    """theta + std * rms(theta) * N(0, 1) per matrix (ndim >= 2); other leaves unchanged."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    out = []
    for p, k in zip(leaves, keys):
        if p.ndim >= 2:
            rms = jnp.sqrt(jnp.mean(jnp.square(p.astype(jnp.float32))))
            p = (p + std * rms * jax.random.normal(k, p.shape, jnp.float32)).astype(p.dtype)
        out.append(p)
    return jax.tree.unflatten(treedef, out)


def reset_adam_moments(opt_state):
    """Adam's first/second moments and bias-correction count to zero; other optimizer state (the lr
    schedule's count) kept."""
    def fix(s):
        if isinstance(s, optax.ScaleByAdamState):
            return s._replace(count=jnp.zeros_like(s.count), mu=jax.tree.map(jnp.zeros_like, s.mu),
                              nu=jax.tree.map(jnp.zeros_like, s.nu))
        return s

    return jax.tree.map(fix, opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))


@jax.jit
def _scaled_update(prev, new, k):
    return jax.tree.map(lambda a, b: (a + k * (b - a)).astype(b.dtype), prev, new)


@jax.jit
def _ema_update(avg, params, decay):
    return jax.tree.map(lambda a, p: (decay * a + (1.0 - decay) * p).astype(a.dtype), avg, params)


_copy = jax.jit(lambda t: jax.tree.map(jnp.copy, t))


def rewarm_target(t: int, t0: int, base: Callable[[int], float], peak: float, warmup: int, decay: int) -> float | None:
    """The wanted lr of update ``t`` in a rewarm window started at ``t0`` (None outside it)."""
    if t < t0 or t >= t0 + warmup + decay:
        return None
    if t < t0 + warmup:
        b0 = base(t0)
        return b0 + (peak - b0) * (t - t0 + 1) / warmup
    u = (t - t0 - warmup) / max(decay, 1)
    return base(t) + (peak - base(t)) * 0.5 * (1.0 + math.cos(math.pi * u))


class PlateauWatch:
    """Fires when a metric (lower is better) has not improved by ``min_delta`` for ``patience`` evals."""

    def __init__(self, patience: int, min_delta: float, cooldown: int, max_triggers: int):
        self.patience, self.min_delta, self.cooldown, self.max_triggers = patience, min_delta, cooldown, max_triggers
        self.best, self.bad, self.since, self.fired = math.inf, 0, 10**9, 0

    def update(self, value: float) -> bool:
        self.since += 1
        if value < self.best - self.min_delta:
            self.best, self.bad = value, 0
            return False
        self.best = min(self.best, value)
        self.bad += 1
        if self.bad >= self.patience and self.since >= self.cooldown and self.fired < self.max_triggers:
            self.bad, self.since, self.fired = 0, 0, self.fired + 1
            return True
        return False

    def to_json(self) -> dict:
        return {"best": None if math.isinf(self.best) else self.best, "bad": self.bad, "since": self.since,
                "fired": self.fired}

    def load(self, d: dict) -> None:
        self.best = math.inf if d["best"] is None else d["best"]
        self.bad, self.since, self.fired = d["bad"], d["since"], d["fired"]


def parse_kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in str(text).split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ConfigError(f"chamber.interventions has unknown {bad}; choose from {list(KINDS)} (comma separated)")
    if "ema_swap" in kinds and "ema" not in kinds:
        raise ConfigError("chamber.interventions=ema_swap needs ema too (e.g. 'ema,ema_swap')")
    return [k for k in kinds if k != "none"]


# ------------------------------------------------------------------------------- the hook


class Chamber:
    """The chamber's hook. ``eval_params(params) -> {"valid_bpb": ...}`` scores averaged weights;
    ``fresh_params(seed)`` returns a new initialisation (for shrink-and-perturb)."""

    def __init__(self, ccfg, train_cfg, eval_params: Callable | None = None, fresh_params: Callable | None = None):
        from hqf_jax.trainer.optim import lr_schedule

        unknown = sorted(set(ccfg.keys()) - set(default_config().keys()))
        if unknown:
            raise ConfigError(f"chamber has unknown keys {unknown}; valid keys: {sorted(default_config().keys())}")
        self.c = ccfg
        self.kinds = parse_kinds(ccfg.interventions)
        if ccfg.trigger not in TRIGGERS:
            raise ConfigError(f"chamber.trigger={ccfg.trigger!r}: choose one of {list(TRIGGERS)}")
        if "shrink_perturb" in self.kinds and fresh_params is None:
            raise ConfigError("chamber shrink_perturb needs a model builder (use it through lm_task.build_task)")
        if "ema" in self.kinds and ccfg.ema_kind not in ("ema", "uniform"):
            raise ConfigError(f"chamber.ema_kind={ccfg.ema_kind!r}: choose 'ema' or 'uniform'")
        self.train_cfg = train_cfg
        self.total = int(train_cfg.steps)
        self.eval_every, self.ckpt_every, self.log_every = (int(train_cfg.eval_every), int(train_cfg.ckpt_every),
                                                            int(train_cfg.log_every))
        sched = lr_schedule(train_cfg)
        self.base = lambda t: float(sched(t))
        self.eval_params, self.fresh_params = eval_params, fresh_params
        self.watch = PlateauWatch(int(ccfg.patience), float(ccfg.min_delta), int(ccfg.cooldown), int(ccfg.max_triggers))
        self.windows: list[int] = []  # start steps of rewarm windows
        self.fired = 0
        self.avg, self.avg_n = None, 0
        self.prev = None  # params before the coming update, while a rewarm window is open
        self.ready = False
        self.workdir: Path | None = None

    # ---------------------------------------------------------------- helpers

    def lr_scale(self, t: int) -> float:
        """Multiplier of update ``t``'s lr (1 outside every rewarm window; the latest window wins)."""
        for t0 in reversed(self.windows):
            want = rewarm_target(t, t0, self.base, float(self.c.rewarm_peak) * float(self.train_cfg.lr),
                                 int(self.c.rewarm_warmup), int(self.c.rewarm_decay))
            if want is not None:
                b = self.base(t)
                return want / b if b > 0 else 1.0
        return 1.0

    def _due_eval(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.total

    def _new_eval(self, step: int) -> bool:
        return step > 1 and (step - 1) % self.eval_every == 0

    def _host_state(self) -> dict:
        return {"watch": self.watch.to_json(), "windows": self.windows, "fired": self.fired, "avg_n": self.avg_n}

    def on_save(self, step: int, writer) -> None:
        """The loop saved a checkpoint at ``step`` (also off the ckpt_every grid: a new best, a signal)."""
        self._save(step, writer)

    def _save(self, step: int, writer) -> None:
        if self.workdir is None or not writer.enabled:
            return
        d = self.workdir / STATE_DIR
        d.mkdir(parents=True, exist_ok=True)
        if self.avg is not None:
            np.savez(d / f"{step}.npz", *[np.asarray(x) for x in jax.tree.leaves(self.avg)])
        (d / f"{step}.json").write_text(json.dumps(self._host_state()))
        for old in d.glob("*.json"):  # keep the host states of the checkpoints that still exist
            s = old.stem
            if s.isdigit() and int(s) < step and not (self.workdir / "checkpoints" / s).exists():
                old.unlink()
                (d / f"{s}.npz").unlink(missing_ok=True)

    def _restore(self, step: int, state, writer) -> None:
        d = self.workdir / STATE_DIR
        path, h = d / f"{step}.json", None
        if path.exists():
            h = json.loads(path.read_text())
        elif (d / "latest.json").exists():
            h = json.loads((d / "latest.json").read_text())
            h = h if h.get("step") == step else None
        if h is None:
            writer.event(step, "chamber_state_missing", path=str(path))
            return
        self.watch.load(h["watch"])
        self.windows, self.fired, self.avg_n = list(h["windows"]), h["fired"], h["avg_n"]
        npz = d / f"{step}.npz"
        if "ema" in self.kinds and not npz.exists():
            writer.event(step, "chamber_state_partial", missing=str(npz), note="the weight average restarts here")
        if npz.exists() and "ema" in self.kinds:
            leaves = np.load(npz)
            like, treedef = jax.tree.flatten(state["params"])
            self.avg = jax.tree.unflatten(treedef, [jax.device_put(jnp.asarray(leaves[f"arr_{i}"], x.dtype), x.sharding)
                                                    for i, x in enumerate(like)])
        writer.event(step, "chamber_restore", **h["watch"], windows=self.windows)

    # ---------------------------------------------------------------- the hook

    def __call__(self, step: int, state, writer, last):
        if not self.ready:
            self.ready = True
            self.workdir = Path(writer.path).parent
            if step > 1:  # resumed from checkpoint step-1
                self._restore_for_resume(step - 1, state, writer)
        params, opt_state, changed = state["params"], state["opt_state"], False

        # 1. lr re-warming of the update that produced this step
        k = self.lr_scale(step - 1)
        if self.prev is not None and k != 1.0:
            params, changed = _scaled_update(self.prev, params, jnp.float32(k)), True
        self.prev = None

        # 2. running average
        if "ema" in self.kinds and step >= int(self.c.ema_start):
            if self.avg is None:
                self.avg, self.avg_n = _copy(params), 1
                writer.event(step, "ema_start", kind=self.c.ema_kind)
            else:
                self.avg_n += 1
                d = float(self.c.ema_decay) if self.c.ema_kind == "ema" else 1.0 - 1.0 / self.avg_n
                self.avg = _ema_update(self.avg, params, jnp.float32(d))

        # 3. triggers
        fire = False
        if self.c.trigger == "plateau" and self._new_eval(step) and self.c.metric in last:
            value = float(last[self.c.metric])
            if self.watch.update(value):
                fire = True
                writer.event(step, "plateau", metric=self.c.metric, value=value, best=self.watch.best,
                             patience=self.watch.patience, trigger=self.watch.fired)
        elif self.c.trigger == "steps" and step in tuple(int(s) for s in self.c.at_steps):
            fire = True
        if fire and self.kinds:
            params, opt_state = self._intervene(step, params, opt_state, writer)
            changed = True

        # 4. averaged weights: scored at evals, swapped in at the end
        if self.avg is not None and self.eval_params is not None and self._due_eval(step):
            ev = {f"ema_{k}": v for k, v in self.eval_params(self.avg).items()}
            writer.scalars(step, ev)
            last.update(ev)
        if self.avg is not None and step == self.total and self.c.ema_swap_at_end:
            params, changed = _copy(self.avg), True
            writer.event(step, "ema_swap", reason="end", averaged=self.avg_n)

        # 5. keep the params before the next update while a rewarm window is open
        if self.lr_scale(step) != 1.0:
            self.prev = _copy(params)
            if step % self.log_every == 0:
                writer.scalars(step, {"chamber_lr_scale": self.lr_scale(step),
                                      "chamber_lr": self.lr_scale(step) * self.base(step)})
        if step % self.ckpt_every == 0 or step == self.total:
            self._save(step, writer)
        elif self.workdir is not None and writer.enabled:  # a checkpoint on a signal may come at any step
            (self.workdir / STATE_DIR).mkdir(parents=True, exist_ok=True)
            (self.workdir / STATE_DIR / "latest.json").write_text(json.dumps({"step": step, **self._host_state()}))
        if not changed:
            return None
        shard = jax.tree.map(lambda x: x.sharding, state["params"])
        return {"step": state["step"], "params": jax.device_put(params, shard), "opt_state": opt_state}

    def _restore_for_resume(self, step: int, state, writer) -> None:
        """Host state of checkpoint ``step``. ``state`` already holds the update that made step+1;
        when that update lies in a rewarm window, the params before it are checkpoint ``step``'s."""
        self._restore(step, state, writer)
        if self.lr_scale(step) != 1.0:
            from hqf_jax.trainer.checkpoint import Checkpointer, abstract_like

            ckpt = Checkpointer(self.workdir, async_save=False)
            try:
                self.prev = ckpt.restore(step, abstract_like(state))["params"]
            finally:
                ckpt.close()

    def _intervene(self, step: int, params, opt_state, writer):
        self.fired += 1
        key = jax.random.fold_in(jax.random.PRNGKey(int(self.c.seed)), self.fired)
        for kind in self.kinds:
            if kind == "ema_swap":
                params = _copy(self.avg)
                writer.event(step, "ema_swap", reason="plateau", averaged=self.avg_n, trigger=self.fired)
            elif kind == "shrink_perturb":
                shard = jax.tree.map(lambda x: x.sharding, params)
                fresh = jax.device_put(self.fresh_params(int(self.c.seed) + self.fired), shard)
                params = shrink_perturb(params, fresh, float(self.c.shrink), float(self.c.perturb), bool(self.c.sp_all))
                if self.c.reset_moments:
                    opt_state = reset_adam_moments(opt_state)
                writer.event(step, "shrink_perturb", shrink=float(self.c.shrink), perturb=float(self.c.perturb),
                             reset_moments=bool(self.c.reset_moments), trigger=self.fired)
            elif kind == "noise":
                params = add_noise(params, key, float(self.c.noise_std))
                writer.event(step, "weight_noise", std=float(self.c.noise_std), trigger=self.fired)
            elif kind == "rewarm":
                self.windows.append(step)
                writer.event(step, "rewarm", peak_lr=float(self.c.rewarm_peak) * float(self.train_cfg.lr),
                             schedule_lr=self.base(step), warmup=int(self.c.rewarm_warmup),
                             decay=int(self.c.rewarm_decay), trigger=self.fired)
        return params, opt_state


def chamber_config(cfg) -> ml_collections.ConfigDict | None:
    """The run's chamber section merged over the defaults, or None when the config has none."""
    if "chamber" not in cfg:
        return None
    c = default_config()
    for k, v in cfg.chamber.items():
        if k not in c:
            raise ConfigError(f"chamber has unknown key {k!r}; valid keys: {sorted(c.keys())}")
        c[k] = v
    return c


def from_config(cfg, task, build_model: Callable | None = None) -> list:
    """The chamber hooks of a byte-LM run (``[]`` without a ``chamber`` section). Averaged weights are
    scored with ``task.eval_fn``; fresh initialisations come from ``build_model(cfg)`` with another seed."""
    ccfg = chamber_config(cfg)
    if ccfg is None:
        return []
    from flax import nnx

    graphdef, _, rest = nnx.split(task.model, task.trainable, ...)

    def eval_params(params):
        return task.eval_fn(nnx.merge(graphdef, params, rest))

    def fresh_params(seed: int):
        c = ml_collections.ConfigDict(cfg.to_dict())
        c.train.seed = seed
        return nnx.state(build_model(c), task.trainable)

    return [Chamber(ccfg, cfg.train, eval_params if task.eval_fn else None, fresh_params if build_model else None)]
