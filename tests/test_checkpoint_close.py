"""Checkpointer.close(): whatever orbax's own close does after a failed save, no temporary folder is left and the
one error a user sees is the save's (a CheckpointError naming the kept step)."""

from __future__ import annotations

import errno
import os

import jax.numpy as jnp
import pytest

from hqf_jax.errors import CheckpointError
from hqf_jax.trainer.checkpoint import TMP_MARK, Checkpointer


def _state(v: float):
    return {"params": {"w": jnp.full((4,), v, jnp.float32)}}


def _debris_then_raise(ckpt: Checkpointer, name: str):
    """A stand-in for orbax's close that finds a straggling writer's temporary folder and re-raises."""
    real = ckpt.manager.close

    def close():
        real()
        (ckpt.dir / name).mkdir()
        raise RuntimeError("orbax: the save finalize thread failed")

    return close


def test_close_after_a_failed_save_keeps_the_save_error_and_removes_debris(tmp_path, monkeypatch):
    from orbax.checkpoint._src.serialization import jax_array_handlers

    ckpt = Checkpointer(tmp_path, async_save=False, trainer=True)
    ckpt.save(1, _state(1.0))
    ckpt._complete()

    async def full_disk(self, values, infos, args=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(jax_array_handlers.ArrayHandler, "serialize", full_disk)
    with pytest.raises(CheckpointError, match="saving step 2 .*step 1 is kept"):
        ckpt.save(2, _state(2.0))
    monkeypatch.setattr(ckpt.manager, "close", _debris_then_raise(ckpt, f"2{TMP_MARK}-123"))
    ckpt.close()  # the failure was reported by save: orbax's re-raise on close is not a second error
    assert sorted(p.name for p in ckpt.dir.iterdir() if TMP_MARK in p.name) == []
    assert (ckpt.dir / "1").is_dir() and not (ckpt.dir / "2").exists()


def test_a_completed_save_after_a_failed_one_makes_close_errors_news_again(tmp_path, monkeypatch):
    from orbax.checkpoint._src.serialization import jax_array_handlers

    ckpt = Checkpointer(tmp_path, async_save=False, trainer=True)
    real = jax_array_handlers.ArrayHandler.serialize

    async def full_disk(self, values, infos, args=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(jax_array_handlers.ArrayHandler, "serialize", full_disk)
    with pytest.raises(CheckpointError):
        ckpt.save(1, _state(1.0))
    monkeypatch.setattr(jax_array_handlers.ArrayHandler, "serialize", real)
    ckpt.save(2, _state(2.0))
    ckpt._complete()  # step 2 is on disk
    monkeypatch.setattr(ckpt.manager, "close", _debris_then_raise(ckpt, f"3{TMP_MARK}-1"))
    with pytest.raises(RuntimeError, match="finalize thread failed"):
        ckpt.close()
    assert sorted(p.name for p in ckpt.dir.iterdir() if TMP_MARK in p.name) == []


def test_close_error_without_a_failed_save_still_raises_and_removes_debris(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path, async_save=False, trainer=True)
    ckpt.save(1, _state(1.0))
    monkeypatch.setattr(ckpt.manager, "close", _debris_then_raise(ckpt, f"3{TMP_MARK}-7"))
    with pytest.raises(RuntimeError, match="finalize thread failed"):
        ckpt.close()
    assert sorted(p.name for p in ckpt.dir.iterdir() if TMP_MARK in p.name) == []
