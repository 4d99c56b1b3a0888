"""Run logging: tensorboardX scalars and text, and metrics.jsonl in the run folder.

Every row of metrics.jsonl carries the run segment that wrote it: 0 for the first run on a folder, one
more for each later start (a resume). A resume replays the steps after its checkpoint, so a step may
have rows in several segments, one per segment; ``latest_rows`` keeps the newest segment's rows.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without torch: where torch is installed, tensorboardX imports it (2-3 s
    per process) only to accept torch tensors, and this writer logs floats and text. A torch already imported stays."""
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # `import torch` raises ImportError while tensorboardX loads
    try:
        from tensorboardX import SummaryWriter
    finally:
        if blocked and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.enabled = enabled and jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        self.segment = next_segment(self.path) if self.enabled else 0
        if self.enabled:
            self._tb = _summary_writer()(str(Path(workdir) / "tb"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        for k, v in values.items():
            self._tb.add_scalar(k, v, step)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), "segment": self.segment, "time": time.time(), **values}) + "\n")

    def text(self, step: int, tag: str, text: str) -> None:
        if not self.enabled:
            return
        self._tb.add_text(tag, text, step)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), "segment": self.segment, "time": time.time(), tag: text}) + "\n")

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
    """Every row of a run's metrics.jsonl (a last line cut short by a crash is skipped)."""
    path = Path(workdir) / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def _last_line(path: Path, block: int = 1 << 16) -> str | None:
    """The last non-empty line of a text file, reading only its end."""
    with path.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - block))
        lines = [x for x in f.read().splitlines() if x.strip()]
    return lines[-1].decode(errors="replace") if lines else None


def next_segment(path: str | Path) -> int:
    """The segment id of a run starting on this metrics.jsonl: 0 when it is new, else one more than its last row's."""
    path = Path(path)
    line = _last_line(path) if path.exists() else None
    if line is None:
        return 0
    try:
        return int(json.loads(line).get("segment", 0)) + 1
    except (ValueError, AttributeError):  # a row cut short by a crash: count it as the latest segment's
        rows = [r for r in read_metrics(path.parent) if "segment" in r]
        return int(rows[-1]["segment"]) + 1 if rows else 1


def latest_rows(rows: list[dict]) -> list[dict]:
    """The rows a reader wants after resumes: a step's rows from the newest segment that logged it
    (steps replayed after a resume drop the rows of the segment that logged them first)."""
    newest: dict[int, int] = {}
    for r in rows:
        newest[r["step"]] = max(newest.get(r["step"], 0), r.get("segment", 0))
    return [r for r in rows if r.get("segment", 0) == newest[r["step"]]]


class Progress:
    """The training loop's progress: a tqdm bar on a terminal; plain lines at every log step when stderr is a file
    or a pipe (no carriage-return floods under nohup or a scheduler); nothing when disabled."""

    def __init__(self, total: int, initial: int, enabled: bool, unit: str = "step"):
        from tqdm.auto import tqdm

        self.enabled, self.total = enabled, total
        self.interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, disable=not self.interactive, unit=unit, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def log(self, step: int, **fields: str) -> None:
        if self.interactive:
            self.bar.set_postfix(**fields)
        elif self.enabled:
            print(f"[train] step {step}/{self.total} " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)

    def write(self, line: str) -> None:
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()
