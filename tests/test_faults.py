"""Fault injection for runs and checkpoints (issue 19): each way a run used to lose or corrupt data,
reproduced and asserted. Signals and the run lock use real `python -m train.lm` processes; the rest
drive the shared loop in-process on a tiny task (one 64x64 matrix) so each case takes seconds."""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hqf_jax.errors import CheckpointError, ConfigError, NonFiniteError, RunLockError
from hqf_jax.trainer import lm_task
from hqf_jax.trainer.checkpoint import Checkpointer, fingerprint, read_best
from hqf_jax.trainer.loop import Task, train
from hqf_jax.trainer.metrics import latest_rows, read_metrics
from hqf_jax.trainer.runlock import RunLock
from tests.helpers import ROOT, SMALL_LM, as_args, run_module, tiny_config

# failed reads of deliberately corrupted checkpoints leave orbax coroutines that are never awaited
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
LM_ARGS = ["--config", "configs/lm_tiny.py", *as_args(SMALL_LM), "data.seq_len=64", "data.batch_size=8",
           "train.steps=100000", "train.ckpt_every=100000", "train.eval_every=100000", "train.sample_every=100000",
           "train.log_every=5", "data.max_files=20"]


# ----------------------------------------------------------------------------- a tiny task


class Matrix(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.arange(64 * 64, dtype=jnp.float32).reshape(64, 64) / 4096)


def quadratic_loss(model, batch, rng):
    y = batch["x"] @ model.w[...]
    return jnp.mean(y**2) * batch["scale"][0], {}


def tiny_task(evals=None, blow_up_at=None):
    """A Task on one 64x64 matrix. ``evals``: the valid_bpb each eval reports, in order; ``blow_up_at``:
    from this step on the loss is scaled by inf (the state turns non-finite)."""

    def batch_fn(step):
        x = np.random.default_rng(step).normal(size=(4, 64)).astype(np.float32)
        scale = np.inf if blow_up_at is not None and step + 1 >= blow_up_at else 1.0
        return {"x": x, "scale": np.full((4,), scale, np.float32)}

    queue = list(evals or [])
    eval_fn = (lambda model: {"valid_bpb": queue.pop(0)}) if evals is not None else None
    return Task(model=Matrix(), loss_fn=quadratic_loss, batch_fn=batch_fn, eval_fn=eval_fn)


def tiny_cfg(**over):
    base = {"train.steps": 4, "train.ckpt_every": 2, "train.log_every": 1, "train.eval_every": 100,
            "train.sample_every": 100, "train.warmup_steps": 0, "train.keep": 3}
    return tiny_config(**{**base, **over})


def run_tiny(workdir, task=None, **over):
    cfg = tiny_cfg(**over)
    return train(task or tiny_task(), cfg.train, cfg.mesh, workdir, progress=False)


def saved_steps(workdir) -> list[int]:
    d = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def params_at(workdir, step):
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        meta = ckpt.manager.item_metadata(step)
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta)
        return np.asarray(ckpt.restore(step, abstract)["params"]["w"]["value"])
    finally:
        ckpt.close()


def flip_bit(workdir, step, offset=None):
    """Flip one bit in the middle of the largest data file of a saved step."""
    data = max((Path(workdir) / "checkpoints" / str(step)).rglob("d/*"), key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2 if offset is None else offset] ^= 0x10
    data.write_bytes(bytes(raw))


def one_line(text: str) -> str:
    assert "\n" not in text.strip(), text
    return text


# ----------------------------------------------------------------------------- lock and signals


def _start(workdir, *extra):
    return subprocess.Popen([sys.executable, "-m", "train.lm", *LM_ARGS, *extra, "--workdir", str(workdir)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(workdir, step, proc, timeout=300):
    metrics, deadline = Path(workdir) / "metrics.jsonl", time.time() + timeout
    while time.time() < deadline:
        if metrics.exists() and f'"step": {step},' in metrics.read_text():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"step {step} was never logged")


def test_second_writer_refused_and_double_sigterm_saves_and_exits_143(tmp_path):
    proc = _start(tmp_path)
    try:
        _wait_for_step(tmp_path, 10, proc)
        second = run_module("train.lm", *LM_ARGS, "--workdir", str(tmp_path))
        assert second.returncode == 2, second.stderr[-1500:]
        errors = [x for x in second.stderr.splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr[-1500:]
        assert f"pid {proc.pid}" in errors[0] and "in use" in errors[0]
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # used to raise KeyboardInterrupt and lose the step in hand
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    steps = saved_steps(tmp_path)
    assert len(steps) == 1 and steps[0] >= 10, steps
    assert f"stopped at step {steps[0]} by SIGTERM" in out and "done" not in out, out[-500:]
    rows = read_metrics(tmp_path)
    assert len({r["segment"] for r in rows}) == 1  # the refused writer wrote nothing
    RunLock(tmp_path).acquire().release()  # released on exit


def test_double_ctrl_c_saves_and_exits_130(tmp_path):
    proc = _start(tmp_path)
    try:
        _wait_for_step(tmp_path, 5, proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    steps = saved_steps(tmp_path)
    assert steps and steps[-1] >= 5 and f"stopped at step {steps[-1]} by SIGINT" in out


def test_lock_dies_with_its_holder(tmp_path):
    code = f"import time; from hqf_jax.trainer.runlock import RunLock; RunLock({str(tmp_path)!r}).acquire(); " \
           "print('locked', flush=True); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockError, match=rf"in use .*pid {holder.pid}\)"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the kernel drops the lock, the file stays
        holder.wait()
    assert (tmp_path / "run.lock").exists()
    lock = RunLock(tmp_path).acquire()
    assert (tmp_path / "run.lock").read_text().strip() == str(os.getpid())
    lock.release()


# ----------------------------------------------------------------------------- checkpoint integrity


def test_checksums_see_every_single_bit_flip():
    rng = np.random.default_rng(0)
    tree = {"f32": jnp.asarray(rng.normal(size=(33, 7)), jnp.float32), "bf16": jnp.asarray(rng.normal(size=50), jnp.bfloat16),
            "i32": jnp.asarray(rng.integers(-9, 9, 40), jnp.int32), "u8": jnp.asarray(rng.integers(0, 255, 9), jnp.uint8),
            "step": jnp.asarray(7, jnp.int32)}
    base, bad = fingerprint(tree)
    assert bad == [] and set(base) == set(tree)
    for name, x in tree.items():
        raw = np.asarray(x).copy()
        view = raw.reshape(-1).view(np.uint8)
        for _ in range(5):
            byte, bit = int(rng.integers(view.size)), int(rng.integers(8))
            view[byte] ^= 1 << bit
            changed, _ = fingerprint({**tree, name: jnp.asarray(raw)})
            assert changed[name] != base[name], (name, byte, bit)
            assert all(changed[k] == base[k] for k in tree if k != name)
            view[byte] ^= 1 << bit
    _, bad = fingerprint({**tree, "f32": tree["f32"].at[3, 2].set(jnp.nan)})
    assert bad == ["f32"]


def test_checksums_compile_per_leaf_shape_and_keep_their_values():
    """A tree whose leaves have shapes already seen compiles nothing (a jit of the whole tree compiled once per
    tree); the checksums are those of the whole-tree form, so a checkpoint saved before still verifies."""
    from hqf_jax.trainer import checkpoint as C

    rng = np.random.default_rng(1)
    a = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "k": jnp.asarray(rng.integers(0, 9, 4), jnp.int32)}
    b = {"opt": {"mu": a["w"] * 2, "nu": a["w"] * 3}, "count": a["k"] + 1}  # another tree, the same leaf shapes
    C.fingerprint(a)
    compiled = C._sum_and_finite._cache_size()
    sums, _ = C.fingerprint(b)
    assert C._sum_and_finite._cache_size() == compiled
    whole = jax.device_get(jax.jit(lambda t: jax.tree.map(C._leaf_sum, t))(b))  # the whole-tree form's values
    assert sums == {"opt/mu": "".join(f"{int(v):08x}" for v in whole["opt"]["mu"]),
                    "opt/nu": "".join(f"{int(v):08x}" for v in whole["opt"]["nu"]),
                    "count": "".join(f"{int(v):08x}" for v in whole["count"])}
    # pinned: what the whole-tree form of 2026-11 (commit 77b7270) wrote into .sums.json for this tree
    pinned = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) / 7, "k": jnp.arange(5, dtype=jnp.int32) - 2}
    assert C.fingerprint(pinned) == ({"k": "2e2ac0ea19b64430", "w": "37365ca9b37290cc"}, [])


def test_flipped_bit_is_reported_and_the_newest_intact_step_offered_then_used(tmp_path):
    whole = tmp_path / "whole"
    run_tiny(whole)
    run_tiny(tmp_path / "run")
    work = tmp_path / "run"
    flip_bit(work, 4)
    with pytest.raises(CheckpointError) as e:
        run_tiny(work, **{"train.steps": 6})
    msg = one_line(str(e.value))
    # the flip lands in the largest data file: where the container still decodes, the checksum catches it;
    # where it breaks the file's own encoding (which happens depends on the saved bytes), the restore does
    assert "step 4" in msg and "corrupt" in msg, msg
    assert ("differs from the checksum" in msg and "4.sums.json" in msg) or "files there include" in msg, msg
    assert "newest intact step is 2" in msg and "train.resume_fallback=true" in msg
    assert saved_steps(work) == [2, 4]  # nothing moved or deleted without the flag

    final = run_tiny(work, **{"train.resume_fallback": True})  # resumes from 2, replays 3 and 4
    assert final["step"] == 4
    assert (work / "corrupt" / "4").is_dir() and saved_steps(work) == [2, 4]
    np.testing.assert_array_equal(params_at(work, 4), params_at(whole, 4))  # bit-exact, as if never corrupted


def test_truncated_data_file_is_one_line_naming_the_array_without_cpp_reprs(tmp_path):
    run_tiny(tmp_path)
    data = max((tmp_path / "checkpoints" / "4").rglob("d/*"), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(CheckpointError) as e:
        run_tiny(tmp_path)
    msg = one_line(str(e.value))
    assert "step 4" in msg and "corrupt" in msg and ".w.value" in msg, msg  # the array orbax failed to read
    assert "pybind11" not in msg and "bound method" not in msg and " at 0x" not in msg, msg
    assert "newest intact step is 2" in msg


def test_non_finite_loss_stops_before_any_save(tmp_path):
    with pytest.raises(NonFiniteError, match=r"loss is (nan|inf) at step 3: .*saved steps \[1, 2\] are kept"):
        run_tiny(tmp_path / "logged", tiny_task(blow_up_at=3), **{"train.ckpt_every": 1})
    assert saved_steps(tmp_path / "logged") == [1, 2]
    assert np.isfinite(params_at(tmp_path / "logged", 2)).all()
    # the loss is not looked at between log steps: the checkpointer still refuses the state
    with pytest.raises(NonFiniteError, match=r"state at step 4 holds NaN or inf .*saved steps \[2\]"):
        run_tiny(tmp_path / "unlogged", tiny_task(blow_up_at=3), **{"train.log_every": 100, "train.steps": 5})
    assert saved_steps(tmp_path / "unlogged") == [2]
    assert not (tmp_path / "unlogged" / "checkpoints" / "4.sums.json").exists()


def test_disk_full_during_save_keeps_the_last_step_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    from orbax.checkpoint._src.serialization import jax_array_handlers

    real = jax_array_handlers.ArrayHandler.serialize
    calls = {"n": 0}

    async def full_disk(self, values, infos, args=None):
        calls["n"] += 1
        if calls["n"] > 1:  # step 2 saves; step 4 finds the disk full halfway into its temporary folder
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await real(self, values, infos, args)

    monkeypatch.setattr(jax_array_handlers.ArrayHandler, "serialize", full_disk)
    with pytest.raises(CheckpointError) as e:
        run_tiny(tmp_path)
    msg = one_line(str(e.value))
    assert "saving step 4" in msg and "No space left on device" in msg and "step 2 is kept" in msg, msg
    assert calls["n"] == 2
    assert saved_steps(tmp_path) == [2]
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name or p.name.startswith("4")]
    assert leftovers == []
    monkeypatch.setattr(jax_array_handlers.ArrayHandler, "serialize", real)
    final = run_tiny(tmp_path)  # space again: the next run resumes from step 2
    assert final["step"] == 4 and saved_steps(tmp_path) == [2, 4]


def test_leftover_temporary_folder_from_a_crash_does_not_block_resume(tmp_path):
    run_tiny(tmp_path, **{"train.steps": 2})
    tmp = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1764460800"  # what a crash mid-save leaves
    (tmp / "default").mkdir(parents=True)
    (tmp / "default" / "partial").write_bytes(b"\0" * 100)
    assert run_tiny(tmp_path)["step"] == 4
    assert saved_steps(tmp_path) == [2, 4] and not tmp.exists()


def test_keep_below_one_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="train.keep=0"):
        Checkpointer(tmp_path, keep=0)


# ----------------------------------------------------------------------------- best step, rotation, early stop


def test_best_step_survives_rotation(tmp_path):
    evals = [5.0, 4.0, 3.0, 1.0, 2.0, 2.5, 1.5, 3.0]  # best at step 4
    final = run_tiny(tmp_path, tiny_task(evals), **{"train.steps": 8, "train.eval_every": 1,
                                                     "train.ckpt_every": 3, "train.keep": 2})
    assert final["step"] == 8 and "early_stop" not in final
    assert read_best(tmp_path) == {"step": 4, "metric": "valid_bpb", "value": 1.0, "mode": "min"}
    assert saved_steps(tmp_path) == [4, 6, 8]  # the newest 2 and the best
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.sums.json")) == ["4.sums.json", "6.sums.json",
                                                                                       "8.sums.json"]
    ckpt = Checkpointer(tmp_path, async_save=False)
    assert ckpt.resolve("best") == (4, "best valid_bpb=1.0000") and ckpt.resolve("latest")[0] == 8
    with pytest.raises(CheckpointError, match=r"no step 5; saved steps: \[4, 6, 8\]"):
        ckpt.resolve(5)
    ckpt.close()


def test_patience_stops_early_and_a_rerun_stays_stopped(tmp_path):
    evals = [5.0, 4.0, 3.0, 1.0, 2.0, 1.0, 0.5, 0.1]  # no improvement at 5 and 6 (1.0 is not better than 1.0)
    over = {"train.steps": 8, "train.eval_every": 1, "train.ckpt_every": 100, "train.patience": 2}
    final = run_tiny(tmp_path, tiny_task(evals), **over)
    assert final["step"] == 6 and final["early_stop"] and final["best_step"] == 4
    assert saved_steps(tmp_path) == [3, 4, 6]  # each improvement was saved; the newest 3 and the best are kept
    events = [json.loads(r["event"]) for r in read_metrics(tmp_path) if "event" in r]
    assert {"event": "early_stop", "best_step": 4, "patience": 2} in events
    again = run_tiny(tmp_path, tiny_task([]), **over)  # resumes at 6 with patience spent: trains no further
    assert again["step"] == 6 and again["early_stop"]
    assert run_tiny(tmp_path, tiny_task([0.9, 0.8]), **{**over, "train.patience": 0})["step"] == 8


def test_eval_uses_the_best_step_by_default_and_names_a_corrupt_one(tmp_path, capsys, monkeypatch):
    from eval import bpb, generate
    from hqf_jax import cli

    cfg = tiny_config(**{**SMALL_LM, "data.seq_len": 32, "data.batch_size": 4, "train.steps": 4, "train.ckpt_every": 2,
                         "train.eval_every": 2, "train.eval_max_bytes": 1024, "train.sample_every": 100,
                         "data.max_files": 10})
    task, _ = lm_task.build_task(cfg)
    train(task, cfg.train, cfg.mesh, tmp_path, cli.config_to_json(cfg), progress=False)
    best = read_best(tmp_path)
    assert best["metric"] == "valid_bpb" and best["step"] in (2, 4)
    best["step"] = 2  # make the best an older step than the newest, as after overfitting
    (tmp_path / "best.json").write_text(json.dumps(best))
    capsys.readouterr()

    bpb.main(["--run", str(tmp_path), "--max-bytes", "1024"])
    assert "step 2: best valid_bpb=" in capsys.readouterr().out
    assert lm_task.load_run(tmp_path, "latest")[2] == 4
    out = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdout", out)  # generate writes raw bytes to stdout.buffer
    generate.main(["--run", str(tmp_path), "--max-bytes", "3", "--prompt", "a"])
    assert "step 2 (best valid_bpb=" in capsys.readouterr().err
    assert out.buffer.getvalue().startswith(b"a") and len(out.buffer.getvalue()) == 5  # prompt, 3 bytes, newline
    monkeypatch.undo()

    flip_bit(tmp_path, 4)  # eval.bpb used to print NaN with exit 0
    with pytest.raises(SystemExit) as e:
        cli.run_main(lambda: bpb.main(["--run", str(tmp_path), "--step", "latest", "--max-bytes", "1024"]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "step 4" in errors[0] and "differs from the checksum" in errors[0], err
    assert "newest intact step before it is 2 (--step 2)" in errors[0]
    assert lm_task.load_run(tmp_path, "best")[2] == 2


# ----------------------------------------------------------------------------- metrics segments


def test_replayed_steps_after_a_crash_are_a_new_segment(tmp_path):
    run_tiny(tmp_path)
    for p in (tmp_path / "checkpoints").glob("4*"):  # a crash after step 4 was logged, before it was saved
        if p.is_dir():
            import shutil

            shutil.rmtree(p)
    run_tiny(tmp_path)  # resumes from 2 and logs 3 and 4 again
    rows = [r for r in read_metrics(tmp_path) if "loss" in r]
    pairs = [(r["step"], r["segment"]) for r in rows]
    assert pairs == [(1, 0), (2, 0), (3, 0), (4, 0), (3, 1), (4, 1)]
    assert [(r["step"], r["segment"]) for r in latest_rows(rows)] == [(1, 0), (2, 0), (3, 1), (4, 1)]
    restore = [json.loads(r["event"]) for r in read_metrics(tmp_path) if "event" in r]
    assert {"event": "restore", "from_step": 2} in restore


# ----------------------------------------------------------------------------- dropout


def test_dropout_zero_is_the_old_model_and_dropout_acts_only_in_training():
    from hqf_jax.nn.retnet import RetNetConfig, RetNetLM

    base = dict(d_model=32, num_layers=1, num_heads=2, qk_dim=32, v_dim=64, ffn_dim=64, chunk_size=16)
    off = RetNetLM(RetNetConfig(**base), nnx.Rngs(0))
    on = RetNetLM(RetNetConfig(**base, dropout=0.3), nnx.Rngs(0))
    for a, b in zip(jax.tree.leaves(nnx.state(off, nnx.Param)), jax.tree.leaves(nnx.state(on, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same init: checkpoints are interchangeable
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 24)), jnp.int32)
    batch = {"inputs": tokens, "targets": jnp.roll(tokens, -1, axis=1)}
    plain = np.asarray(off(tokens))
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    np.testing.assert_array_equal(np.asarray(off(tokens, dropout_rng=k1)), plain)  # rate 0: no change at all
    l0 = [float(lm_task.next_byte_loss(off, batch, k)[0]) for k in (k1, k2)]
    assert l0[0] == l0[1]
    np.testing.assert_array_equal(np.asarray(on(tokens)), plain)  # scoring/generation: no dropout
    train1, train1b, train2 = (np.asarray(on(tokens, dropout_rng=k)) for k in (k1, k1, k2))
    assert not np.allclose(train1, plain) and not np.allclose(train1, train2)
    np.testing.assert_array_equal(train1, train1b)  # a pure function of the rng: resume stays exact
    l1 = float(lm_task.next_byte_loss(on, batch, k1)[0])
    assert l1 != l0[0] and np.isfinite(l1)
    with pytest.raises(ValueError, match="model.dropout"):
        RetNetConfig(**base, dropout=1.0).validate()


def test_max_seconds_makes_the_step_it_passes_the_last_one(tmp_path):
    """train.max_seconds (the GPU studies' time budget): the step that passes it is logged, evaluated and saved as
    the last one, the result says so, and metrics.jsonl records the event."""
    task = tiny_task(evals=[1.5])
    inner = task.batch_fn
    task.batch_fn = lambda step: (time.sleep(0.2), inner(step))[1]
    cfg = tiny_cfg(**{"train.steps": 1000})
    with cfg.unlocked():
        cfg.train.max_seconds = 1.0
    final = train(task, cfg.train, cfg.mesh, tmp_path, progress=False)
    assert final["max_seconds"] is True and 1 <= final["step"] < 1000
    assert saved_steps(tmp_path)[-1] == final["step"] and final["valid_bpb"] == 1.5
    assert any("max_seconds" in json.dumps(m) for m in read_metrics(tmp_path))
    assert "max_seconds" not in run_tiny(tmp_path / "uncapped")  # without it nothing changes
