"""Run logging: tensorboardX scalars and text, and metrics.jsonl in the run folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax


class MetricWriter:
    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.enabled = enabled and jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tb"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        for k, v in values.items():
            self._tb.add_scalar(k, v, step)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")

    def text(self, step: int, tag: str, text: str) -> None:
        if not self.enabled:
            return
        self._tb.add_text(tag, text, step)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), "time": time.time(), tag: text}) + "\n")

    def event(self, step: int, event: str, /, **info) -> None:
        """A one-off event (restore, intervention, signal) in metrics.jsonl and tensorboard text."""
        self.text(step, "event", json.dumps({"event": event, **info}))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
