"""One writer per run folder: an exclusive ``flock`` on ``<workdir>/run.lock``.

The lock lives as long as the process holding the open file: it is released on exit, on a crash and
on SIGKILL (the kernel drops it), so a stale lock file never blocks the next run. The file holds the
holder's pid, which a refused second writer names.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hqf_jax.errors import RunLockError

LOCK_NAME = "run.lock"


class RunLock:
    def __init__(self, workdir: str | Path):
        self.path = Path(workdir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunLockError(f"cannot write to run folder {self.path.parent} ({e.strerror}); pass a --workdir on a "
                               "writable disk") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockError(f"run folder {self.path.parent} is in use by another training process (pid {holder}); "
                               "wait for it to finish or stop it, or pass another --workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
