"""The one training loop every track shares.

A track describes itself as a ``Task`` (model, loss, batches, optional eval and samples); the
loop owns the rest: optimizer, sharded jitted step, orbax checkpoints (every N steps, at each new
best eval, on SIGTERM/SIGINT and at the end; newest K and the best kept, latest restored
automatically, checked against checksums), logging (tensorboardX, metrics.jsonl with a segment per
start, tqdm with throughput and ETA), one writer per run folder (runlock.py), a stop on a non-finite
loss before anything is saved, and early stopping (``train.patience`` evals without improvement).

Resume is exact: the state is (step, trainable params, optimizer state), batches are a pure
function of the step, and per-step randomness is ``fold_in(seed, step)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.errors import NonFiniteError
from hqf_jax.trainer import mfu
from hqf_jax.trainer import sharding as shd
from hqf_jax.trainer.best import BestKeeper
from hqf_jax.trainer.checkpoint import Checkpointer, abstract_like
from hqf_jax.trainer.metrics import MetricWriter, Progress
from hqf_jax.trainer.optim import make_optimizer
from hqf_jax.trainer.runlock import RunLock
from hqf_jax.trainer.signals import Stopper

LossFn = Callable[[nnx.Module, dict, jax.Array], tuple[jax.Array, dict]]


@dataclasses.dataclass
class Task:
    model: nnx.Module
    loss_fn: LossFn  # (model, batch, rng) -> (scalar loss, metrics); traced inside jit
    batch_fn: Callable[[int], dict[str, np.ndarray]]  # step -> global batch (host arrays), pure in step
    eval_fn: Callable[[nnx.Module], dict[str, float]] | None = None
    sample_fn: Callable[[nnx.Module, int], str] | None = None
    trainable: Any = nnx.Param  # nnx filter: what the optimizer updates (and checkpoints hold)
    units_per_step: int = 0  # bytes (or tokens) per step, for throughput
    unit_name: str = "bytes"
    flops_per_step: float = 0.0  # model FLOPs per step, for TFLOP/s
    interventions: list = dataclasses.field(default_factory=list)  # hooks(step, state, ...) -> state [, .on_save]
    best_metric: str | None = "valid_bpb"  # the eval_fn key that picks the best step (kept, used by eval)
    best_mode: str = "min"


def _train_state(params, opt_state, step):
    return {"step": jnp.asarray(step, jnp.int32), "params": params, "opt_state": opt_state}


def make_train_step(loss_fn: LossFn, graphdef, tx, schedule, seed: int, grad_accum: int = 1):
    """The pure train step (state, rest, batch) -> (state, metrics) that ``train`` jits; benchmarks
    time this same function.

    ``grad_accum`` = k > 1 splits the batch into k micro-batches (rows i, i+k, i+2k, ...: each device
    keeps its own rows), runs them one after another in a scan and averages loss, metrics and
    gradients: one optimizer update, the activation memory of a k-times smaller batch. For a loss that
    is a mean over rows this is the step on the whole batch. Micro-batch i draws ``fold_in(rng, i)``."""
    if grad_accum < 1:
        raise ValueError(f"train.grad_accum={grad_accum}: give a number of micro-batches >= 1")

    def step_fn(state, rest, batch):
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), state["step"])

        def loss_of(p, b, r):
            return loss_fn(nnx.merge(graphdef, p, rest), b, r)

        grad_fn = jax.value_and_grad(loss_of, has_aux=True)
        if grad_accum == 1:
            (loss, metrics), grads = grad_fn(state["params"], batch, rng)
        else:
            (loss, metrics), grads = _accumulate(grad_fn, state["params"], batch, rng, grad_accum)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = jax.tree.map(lambda p, u: p + u.astype(p.dtype), state["params"], updates)
        metrics = {**metrics, "loss": loss, "grad_norm": _global_norm(grads), "lr": schedule(state["step"])}
        return _train_state(params, opt_state, state["step"] + 1), metrics

    return step_fn


def _accumulate(grad_fn, params, batch, rng, k: int):
    """Mean of ``grad_fn`` over k strided micro-batches of ``batch``, in a scan (one micro-batch live)."""
    rows = {x.shape[0] for x in jax.tree.leaves(batch)}
    if len(rows) != 1 or next(iter(rows)) % k:
        raise ValueError(f"train.grad_accum={k} must divide the batch rows {sorted(rows)}: change data.batch_size")
    n = next(iter(rows))
    micro = jax.tree.map(lambda x: x.reshape(n // k, k, *x.shape[1:]).swapaxes(0, 1), batch)

    def body(acc, inp):
        i, b = inp
        out = grad_fn(params, b, jax.random.fold_in(rng, i))
        return jax.tree.map(lambda a, o: a + o.astype(a.dtype) / k, acc, out), None

    (loss, metrics), grads = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.promote_types(s.dtype, jnp.float32)),
                         ((loss, metrics), grads))
    out, _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
    # back to the parameters' dtypes (float32 here, so nothing changes unless params are 16-bit)
    return out[0], jax.tree.map(lambda g, p: g.astype(p.dtype), out[1], params)


def _device_memory() -> dict[str, float]:
    """Peak memory of the first local device in GiB, where the backend reports it (GPU/TPU; not CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return {"device_mem_gib": peak / 2**30} if peak else {}


def train(task: Task, train_cfg, mesh_cfg, workdir: str | Path, config_json: str | None = None,
          progress: bool = True, devices=None) -> dict[str, float]:
    """Train ``task`` to ``train_cfg.steps``, resuming from the newest checkpoint in ``workdir``.

    The mesh spans ``devices`` (default: every device of every process). The result holds the last
    metrics, "step", and "signal" (the signal's name when one stopped the run early, after saving) or
    "early_stop" (patience ran out)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if jax.process_index() == 0:  # the other processes write only their shards of the checkpoints
            stack.enter_context(RunLock(workdir))
        stopper = stack.enter_context(Stopper())  # held until the last save is on disk
        return _train(task, train_cfg, mesh_cfg, workdir, config_json, progress, devices, stopper)


def _train(task, train_cfg, mesh_cfg, workdir, config_json, progress, devices, stopper):
    mesh = shd.make_mesh(mesh_cfg, devices)
    if jax.process_count() > 1 and hasattr(task.batch_fn, "read_only_rows"):  # each process reads only its rows
        task.batch_fn.read_only_rows(shd.local_rows(shd.batch_sharding(mesh), (task.batch_fn.batch_size, task.batch_fn.seq_len)))
    graphdef, params, rest = nnx.split(task.model, task.trainable, ...)
    tx, schedule = make_optimizer(train_cfg)

    params_sh = shd.tree_shardings(params, mesh)
    rest_sh = shd.tree_shardings(rest, mesh)
    params = jax.device_put(params, params_sh)
    rest = jax.device_put(rest, rest_sh)
    # Adam's mu/nu carry their parameter's path as a suffix: the same rules give them its sharding
    opt_state = jax.jit(tx.init, out_shardings=shd.tree_shardings(jax.eval_shape(tx.init, params), mesh))(params)
    state = _train_state(params, opt_state, 0)
    state_sh = shd.tree_shardings(state, mesh)
    state = jax.device_put(state, state_sh)  # the step counter (a scalar) replicated over the mesh
    if jax.process_index() == 0 and mesh.size > 1:
        info = shd.describe(state)
        print(f"[train] mesh {dict(mesh.shape)} over {jax.process_count()} process(es): state "
              f"{info['bytes'] / 2**20:.1f} MiB, {info['bytes_per_device'] / 2**20:.1f} MiB per device, "
              f"{int(info['sharded_leaves'])}/{int(info['leaves'])} arrays sharded")

    ckpt = Checkpointer(workdir, keep=train_cfg.keep, trainer=True)
    writer = MetricWriter(workdir)
    if ckpt.latest_step() is not None:
        state, start = ckpt.restore_newest(abstract_like(state), fallback=bool(train_cfg.get("resume_fallback", False)))
        writer.event(start, "restore", from_step=start)
        if jax.process_index() == 0:
            print(f"[train] resumed from step {start} in {ckpt.dir}")
    start = int(state["step"])
    best = BestKeeper(task.best_metric, task.best_mode, train_cfg.get("patience", 0), train_cfg.eval_every,
                      ckpt.best(), start)
    if config_json is not None and jax.process_index() == 0:  # only once the checkpoint is known to fit
        (workdir / "config.json").write_text(config_json)

    step_fn = make_train_step(task.loss_fn, graphdef, tx, schedule, train_cfg.seed, train_cfg.get("grad_accum", 1))
    peaks = mfu.device_peaks() if task.flops_per_step else {}  # MFU bases: spec and same-run matmul peak
    jit_step = jax.jit(step_fn, in_shardings=(state_sh, rest_sh, shd.batch_sharding(mesh)),
                       out_shardings=(state_sh, None), donate_argnums=(0,))

    def current_model():
        return nnx.merge(graphdef, state["params"], rest)

    total = int(train_cfg.steps)
    # train.max_seconds > 0: a wall-clock cap from here (compiles included); the step it passes becomes the last
    max_seconds = float(train_cfg.get("max_seconds", 0) or 0)
    deadline = time.perf_counter() + max_seconds if max_seconds > 0 else None
    capped = False
    last: dict[str, float] = {}
    bar = Progress(total, start, progress and jax.process_index() == 0)
    t_window, n_window = time.perf_counter(), 0
    step = start
    try:
        with jax.set_mesh(mesh):
            while step < total and not stopper.signal and not best.exhausted:
                state, metrics = jit_step(state, rest, shd.put_batch(task.batch_fn(step), mesh))
                step += 1
                n_window += 1
                if deadline is not None and step < total and time.perf_counter() > deadline:
                    total, capped = step, True  # the last step: logged, evaluated and saved as any last step
                    bar.total = total
                    writer.event(step, "max_seconds", seconds=max_seconds)
                for hook in task.interventions:
                    state = hook(step, state, writer, last) or state
                if step % train_cfg.log_every == 0 or step == total:
                    metrics = jax.device_get(metrics)
                    dt = time.perf_counter() - t_window
                    rate = task.units_per_step * n_window / dt if dt > 0 else 0.0
                    metrics = {k: float(v) for k, v in metrics.items()}
                    metrics[f"{task.unit_name}_per_s"] = rate
                    if task.flops_per_step:
                        metrics["tflops"] = task.flops_per_step * n_window / dt / 1e12
                        metrics.update(mfu.mfu_metrics(metrics["tflops"] / mesh.size, peaks))
                    metrics.update(_device_memory())
                    writer.scalars(step, metrics)
                    if not np.isfinite(metrics["loss"]):  # stop before this state can be saved
                        writer.event(step, "non_finite_loss", loss=metrics["loss"])
                        raise NonFiniteError(f"loss is {metrics['loss']} at step {step}: the run stopped without saving "
                                             f"it (saved steps {ckpt.all_steps()} are kept); lower train.lr or check "
                                             "the data, then re-run the same command to resume")
                    last.update(metrics)
                    bar.log(step, loss=f"{metrics['loss']:.3f}", **{f"{task.unit_name}/s": f"{rate:,.0f}"})
                    t_window, n_window = time.perf_counter(), 0
                improved = None
                if task.eval_fn and (step % train_cfg.eval_every == 0 or step == total):
                    ev = task.eval_fn(current_model())
                    writer.scalars(step, ev)
                    last.update(ev)
                    improved = best.update(step, ev)
                    if jax.process_index() == 0:
                        bar.write(f"[eval] step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in ev.items())
                                  + (" (best)" if improved else ""))
                    t_window, n_window = time.perf_counter(), 0
                if task.sample_fn and (step % train_cfg.sample_every == 0 or step == total):
                    writer.text(step, "sample", task.sample_fn(current_model(), step))
                if (step % train_cfg.ckpt_every == 0 or step == total or stopper.signal or improved
                        or best.exhausted):
                    ckpt.save(step, state, best=improved)
                    for hook in task.interventions:  # hooks with host state save it beside the checkpoint
                        getattr(hook, "on_save", lambda *_: None)(step, writer)
                bar.update(1)
            if stopper.signal and step > start:
                writer.event(step, "signal", name=stopper.signal)
                bar.write(f"[train] {stopper.signal}: saved step {step}, exiting; re-run the same command to resume")
            if best.exhausted:
                writer.event(step, "early_stop", best_step=best.step, patience=best.patience)
                bar.write(f"[train] early stop at step {step}: {best.metric} has not improved in {best.bad} evals "
                          f"since step {best.step} ({best.metric}={best.value:.4f})")
    finally:
        bar.close()
        ckpt.close()  # waits for an async save in flight: no saved step is lost on the way out
        writer.close()
    task.model = current_model()
    last["step"] = step
    if capped:
        last["max_seconds"] = True
    if stopper.signal:
        last["signal"] = stopper.signal
    if best.exhausted:
        last["early_stop"] = True
        last["best_step"] = best.step
    return last


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))
