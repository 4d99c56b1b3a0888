"""The training chamber: each intervention does its maths, the rewarm equals training with the wanted
lr, triggers fire where they should, events are logged, and a resumed run is bit-exact."""

import json
import math
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from hqf_jax.errors import ConfigError
from hqf_jax.trainer import interventions as iv
from hqf_jax.trainer.loop import Task, train
from hqf_jax.trainer.metrics import read_metrics


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.up = nnx.Linear(6, 16, rngs=rngs)
        self.down = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.down(jnp.tanh(self.up(x)))


W_TRUE = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
X_VALID = np.random.default_rng(1).normal(size=(64, 6)).astype(np.float32)


def batch_fn(step):
    x = np.random.default_rng([5, step]).normal(size=(8, 6)).astype(np.float32)
    return {"x": x, "y": x @ W_TRUE}


def loss_fn(model, batch, rng):
    loss = jnp.mean(jnp.square(model(batch["x"]) - batch["y"]))
    return loss, {}


def eval_fn(model):
    return {"valid_bpb": float(jnp.mean(jnp.square(model(jnp.asarray(X_VALID)) - X_VALID @ W_TRUE)))}


def train_cfg(**kw):
    c = dict(steps=12, seed=0, lr=1e-2, warmup_steps=2, min_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.98,
             grad_clip=1.0, log_every=1, eval_every=3, ckpt_every=3, keep=20, sample_every=1000)
    c.update(kw)
    return ml_collections.ConfigDict(c)


MESH = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))


def chamber_cfg(**kw):
    c = iv.default_config()
    c.update(kw)
    return c


def make_task(ccfg=None, tcfg=None, extra_hooks=()):
    model = MLP(nnx.Rngs(0))
    task = Task(model=model, loss_fn=loss_fn, batch_fn=batch_fn, eval_fn=eval_fn)
    if ccfg is not None:
        graphdef, _, rest = nnx.split(model, nnx.Param, ...)
        task.interventions = [iv.Chamber(ccfg, tcfg or train_cfg(),
                                         eval_params=lambda p: eval_fn(nnx.merge(graphdef, p, rest)),
                                         fresh_params=lambda seed: nnx.state(MLP(nnx.Rngs(seed)), nnx.Param))]
    task.interventions += list(extra_hooks)
    return task


def params_of(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def events(workdir):
    out = []
    for row in read_metrics(workdir):
        if "event" in row:
            out.append((row["step"], json.loads(row["event"])))
    return out


# ------------------------------------------------------------------------------- pure pieces


def test_shrink_perturb_is_hand_computable_and_leaves_vectors():
    params = {"w": jnp.full((2, 3), 2.0), "b": jnp.full((3,), 5.0)}
    fresh = {"w": jnp.full((2, 3), 10.0), "b": jnp.full((3,), -1.0)}
    out = iv.shrink_perturb(params, fresh, 0.5, 0.1)
    np.testing.assert_allclose(out["w"], 0.5 * 2.0 + 0.1 * 10.0)
    np.testing.assert_allclose(out["b"], 5.0)
    out_all = iv.shrink_perturb(params, fresh, 0.5, 0.1, all_leaves=True)
    np.testing.assert_allclose(out_all["b"], 0.5 * 5.0 - 0.1)


def test_weight_noise_scales_with_each_matrix_rms():
    params = {"a": jnp.full((200, 200), 3.0), "v": jnp.ones((7,))}
    out = iv.add_noise(params, jax.random.PRNGKey(0), 0.1)
    d = np.asarray(out["a"] - params["a"])
    assert abs(d.mean()) < 0.01 and abs(d.std() - 0.3) < 0.01  # std * rms = 0.1 * 3
    np.testing.assert_array_equal(out["v"], params["v"])
    again = iv.add_noise(params, jax.random.PRNGKey(0), 0.1)
    np.testing.assert_array_equal(out["a"], again["a"])


def test_reset_moments_keeps_the_schedule_count():
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(optax.linear_schedule(1.0, 0.0, 10)))
    p = {"w": jnp.ones((2, 2))}
    s = tx.init(p)
    for _ in range(3):
        _, s = tx.update({"w": jnp.ones((2, 2))}, s, p)
    r = iv.reset_adam_moments(s)
    adam, sched = r[1][0], r[1][2]
    assert int(adam.count) == 0 and float(jnp.abs(adam.mu["w"]).sum()) == 0 and float(jnp.abs(adam.nu["w"]).sum()) == 0
    assert int(sched.count) == 3


def test_plateau_watch_patience_cooldown_and_limit():
    w = iv.PlateauWatch(patience=2, min_delta=0.0, cooldown=3, max_triggers=2)
    seq = [5.0, 4.0, 4.5, 4.6, 4.7, 4.8, 4.9, 5.0, 5.1, 5.2, 5.3, 5.4]
    fired = [i for i, v in enumerate(seq) if w.update(v)]
    # improvement at 1; two evals without gain -> fires at 3; cooldown 3 evals -> next at 6; then max 2 reached
    assert fired == [3, 6]
    assert w.best == 4.0


def test_rewarm_target_shape():
    base = lambda t: 1.0  # noqa: E731
    lrs = [iv.rewarm_target(t, 10, base, 3.0, 4, 4) for t in range(8, 20)]
    assert lrs[:2] == [None, None] and lrs[-2:] == [None, None]
    np.testing.assert_allclose(lrs[2:6], [1.5, 2.0, 2.5, 3.0])  # linear up to the peak
    assert lrs[6] == pytest.approx(3.0) and lrs[7] > lrs[8] > lrs[9] > 1.0  # half cosine back down


def test_bad_config_names_the_fix():
    with pytest.raises(ConfigError, match="unknown"):
        iv.parse_kinds("ema,shrink")
    with pytest.raises(ConfigError, match="needs ema"):
        iv.parse_kinds("ema_swap")
    cfg = ml_collections.ConfigDict({"chamber": {"interventionz": "ema"}, "train": train_cfg()})
    with pytest.raises(ConfigError, match="valid keys"):
        iv.chamber_config(cfg)


# ------------------------------------------------------------------------------- in the loop


def test_rewarm_equals_adamw_with_the_wanted_lr(tmp_path):
    """The chamber scales whole AdamW updates; an independent optax AdamW whose lr schedule is the
    wanted one (schedule x multiplier, precomputed per step) must reach the same weights."""
    tcfg = train_cfg(steps=14, eval_every=100, ckpt_every=100)
    ccfg = chamber_cfg(interventions="rewarm", trigger="steps", at_steps=(4,), rewarm_peak=3.0, rewarm_warmup=3,
                       rewarm_decay=4)
    task = make_task(ccfg, tcfg)
    chamber = task.interventions[0]
    start = params_of(task.model)
    train(task, tcfg, MESH, tmp_path, progress=False)
    got = params_of(task.model)

    lrs = np.array([float(chamber.base(t)) * chamber.lr_scale(t) for t in range(14)], np.float32)
    assert lrs[4] > float(chamber.base(4)) and lrs[3] == pytest.approx(float(chamber.base(3)))
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(lambda c: jnp.asarray(lrs)[c], b1=0.9, b2=0.98, weight_decay=0.1))
    model = MLP(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    np.testing.assert_array_equal(jax.tree.leaves(params)[0], start[0])
    opt = tx.init(params)

    @jax.jit  # one compile for the 14 reference steps (eagerly, each op of the first step compiled on its own)
    def ref_step(params, opt, batch):
        grads = jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest), batch, None)[0])(params)
        upd, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, upd), opt

    for step in range(14):
        params, opt = ref_step(params, opt, batch_fn(step))
    for a, b in zip(got, jax.tree.leaves(params)):
        np.testing.assert_allclose(a, np.asarray(b), rtol=2e-5, atol=2e-6)
    assert [e["event"] for _, e in events(tmp_path)] == ["rewarm"]


def test_every_intervention_is_logged_and_ema_is_scored(tmp_path):
    tcfg = train_cfg(steps=12)
    ccfg = chamber_cfg(interventions="ema,ema_swap,shrink_perturb,noise,rewarm", trigger="steps", at_steps=(5,),
                       ema_decay=0.5, ema_swap_at_end=True)
    task = make_task(ccfg, tcfg)
    final = train(task, tcfg, MESH, tmp_path, progress=False)
    names = [(s, e["event"]) for s, e in events(tmp_path)]
    assert (5, "ema_swap") in names and (5, "shrink_perturb") in names and (5, "weight_noise") in names
    assert (5, "rewarm") in names and (1, "ema_start") in names and (12, "ema_swap") in names
    rows = read_metrics(tmp_path)
    assert any("ema_valid_bpb" in r for r in rows) and any("chamber_lr_scale" in r for r in rows)
    # swapped at the end: the final weights are the average, so both scores agree
    assert final["valid_bpb"] == pytest.approx(final["ema_valid_bpb"], rel=1e-6)


def test_plateau_trigger_in_the_loop_logs_where_early_stopping_stops(tmp_path):
    """A plain run (no interventions) still logs the plateau; a run with an lr far too high
    for the data plateaus early."""
    tcfg = train_cfg(steps=15, lr=1.0, eval_every=1, ckpt_every=100, warmup_steps=1)
    task = make_task(chamber_cfg(interventions="none", patience=1, cooldown=1, max_triggers=5), tcfg)
    train(task, tcfg, MESH, tmp_path, progress=False)
    evs = [e for _, e in events(tmp_path)]
    assert evs and all(e["event"] == "plateau" for e in evs)
    vals = [r["valid_bpb"] for r in read_metrics(tmp_path) if "valid_bpb" in r]
    for step, e in events(tmp_path):  # each fires one step after an eval that did not beat the best before it
        assert e["value"] == pytest.approx(vals[step - 2]) and e["value"] >= min(vals[: step - 2])


def test_resume_with_chamber_state_is_bit_exact(tmp_path):
    """Interrupted at step 6 (a checkpoint step, inside the rewarm window) and resumed, the run ends
    with exactly the weights of an uninterrupted one, EMA swapped in at the end included."""
    tcfg = train_cfg(steps=12, ckpt_every=3)
    ccfg = chamber_cfg(interventions="ema,rewarm,noise", trigger="steps", at_steps=(4,), rewarm_peak=2.0,
                       rewarm_warmup=2, rewarm_decay=4, ema_decay=0.7, ema_swap_at_end=True)
    whole = make_task(ccfg, tcfg)
    train(whole, tcfg, MESH, tmp_path / "whole", progress=False)

    def interrupt(step, state, writer, last):
        if step == 6:
            os.kill(os.getpid(), signal.SIGINT)

    first = make_task(ccfg, tcfg, [interrupt])
    out = train(first, tcfg, MESH, tmp_path / "cut", progress=False)
    assert out["step"] == 6
    second = make_task(ccfg, tcfg)
    train(second, tcfg, MESH, tmp_path / "cut", progress=False)
    assert any(e["event"] == "chamber_restore" for _, e in events(tmp_path / "cut"))
    for a, b in zip(params_of(whole.model), params_of(second.model)):
        np.testing.assert_array_equal(a, b)
    assert not math.isnan(float(np.sum(params_of(second.model)[0])))
