"""The best-validation step of a run and early stopping on it (``train.patience``).

The loop asks ``update`` after each eval: it answers the record to store with the checkpoint when
the eval improved on the best so far (the loop then saves that step; the checkpointer writes
best.json once the step is on disk and never rotates it out). After ``patience`` evals without
improvement ``exhausted`` turns true and the run stops (0 = never). The count is a function of the
best step and the current step only, so a resumed run stops exactly where an uninterrupted one would.
"""

from __future__ import annotations

import math


class BestKeeper:
    def __init__(self, metric: str | None, mode: str, patience: int, eval_every: int, saved: dict | None, start: int):
        if mode not in ("min", "max"):
            raise ValueError(f"best mode {mode!r} is not 'min' or 'max'")
        self.metric, self.mode, self.patience = metric, mode, int(patience)
        ok = saved is not None and saved.get("metric") == metric
        self.step = int(saved["step"]) if ok else None
        self.value = float(saved["value"]) if ok else None
        self.bad = start // eval_every - self.step // eval_every if ok else 0  # evals since the best one

    def update(self, step: int, ev: dict[str, float]) -> dict | None:
        """After an eval at ``step``: the best record ({metric, value, mode}) when it improved, else None."""
        value = ev.get(self.metric) if self.metric else None
        if value is None:
            return None
        value = float(value)
        better = math.isfinite(value) and (self.value is None or (value < self.value if self.mode == "min"
                                                                   else value > self.value))
        if not better:
            self.bad += 1
            return None
        self.step, self.value, self.bad = step, value, 0
        return {"metric": self.metric, "value": value, "mode": self.mode}

    @property
    def exhausted(self) -> bool:
        return self.patience > 0 and self.step is not None and self.bad >= self.patience
