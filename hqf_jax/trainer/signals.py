"""Stopping a run on SIGTERM / SIGINT: the loop saves the step in hand, then the process exits with
the signal's conventional status (128 + signal number: 143 for SIGTERM, 130 for SIGINT), so a
supervisor can tell an early stop from success (0) and from an error (1, or 2 for a user error).

Every further signal while the run stops is noted and ignored: the save in flight always completes
(SIGKILL is the way to stop without saving).
"""

from __future__ import annotations

import signal
import sys

# exit status of a run stopped by a signal after saving: the shell's 128 + signal number
EXIT_STATUS = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}


class Stopper:
    """Turns SIGTERM/SIGINT into a flag so the loop saves and exits at a step boundary."""

    def __init__(self):
        self.signal: str | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal is not None:  # a second signal: the step in hand is being saved; finish that
            print(f"[train] {name} again: still saving before exit (SIGKILL stops without saving)",
                  file=sys.stderr, flush=True)
            return
        self.signal = name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def finish(final: dict, workdir, summary: str = "", tag: str = "train") -> None:
    """The last line of a training entry point: "done at step N" and status 0, or "stopped at step N"
    and the signal's exit status when a signal stopped the run early (after saving that step)."""
    where = f" in {workdir}" if workdir is not None else ""
    tail = f": {summary}" if summary else ""
    if final.get("signal"):
        print(f"[{tag}] stopped at step {final['step']} by {final['signal']}{where}{tail}; "
              "re-run the same command to resume", flush=True)
        sys.exit(EXIT_STATUS.get(final["signal"], 1))
    early = " (early stop: no improvement)" if final.get("early_stop") else ""
    print(f"[{tag}] done at step {final['step']}{early}{where}{tail}", flush=True)
