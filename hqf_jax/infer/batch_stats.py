"""Where the continuous batcher's time goes (hqf_jax.infer.batcher keeps one ``LoopStats``; bench.serve_load
prints it beside throughput).

Host wall time of the batcher's loop, by phase: ``prefill_s`` (prefilling newcomers and writing them into their
slots), ``decode_s`` (dispatching decode chunks), ``wait_s`` (blocked copying a finished chunk's ids to the host:
the device is still busy), ``deliver_s`` (handing bytes to requests), ``idle_s`` (nothing to run). Dispatch is
asynchronous, so prefill_s and decode_s are host costs, not device costs, unless the batcher runs with
``profile=True``, which waits for the device after each prefill and each chunk (the device time of each phase,
at the price of the pipelining).

Slot-steps: a decode call of n steps computes ``slots x n`` of them; ``useful`` ones become a request's bytes,
``empty`` ones ran in a slot with no request, ``overrun`` ones ran past the last byte of a request that ends
inside the chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import numpy as np

PHASES = ("prefill_s", "decode_s", "wait_s", "deliver_s", "idle_s")


@dataclasses.dataclass
class LoopStats:
    chunks: int = 0  # decode calls
    steps: int = 0  # decode steps over all calls (chunks x chunk unless some calls are shorter)
    prefill_calls: int = 0
    prefill_rows: int = 0  # requests prefilled
    useful: int = 0
    empty: int = 0
    overrun: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    wait_s: float = 0.0
    deliver_s: float = 0.0
    idle_s: float = 0.0
    started: float = dataclasses.field(default_factory=time.perf_counter)

    @contextlib.contextmanager
    def timed(self, phase: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, phase, getattr(self, phase) + time.perf_counter() - t)

    def summary(self) -> dict:
        """Counts, seconds per phase, and shares: of the wall time since the stats began (``*_share``) and of
        the slot-steps computed (``useful_share``, ``empty_share``, ``overrun_share``)."""
        wall = max(time.perf_counter() - self.started, 1e-9)
        steps = self.useful + self.empty + self.overrun
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "started"}
        out.update(wall_s=wall, slot_steps=steps, other_s=max(wall - sum(getattr(self, p) for p in PHASES), 0.0))
        for p in PHASES + ("other_s",):
            out[p[:-2] + "_share"] = out[p] / wall
        for k in ("useful", "empty", "overrun"):
            out[k + "_share"] = getattr(self, k) / steps if steps else 0.0
        return out


def breakdown_lines(s: dict) -> list[str]:
    """Human lines for a ``LoopStats.summary()``."""
    return [f"batcher loop over {s['wall_s']:.2f} s: prefill {100 * s['prefill_share']:.0f}%, decode dispatch "
            f"{100 * s['decode_share']:.0f}%, waiting on the device {100 * s['wait_share']:.0f}%, delivery "
            f"{100 * s['deliver_share']:.0f}%, idle {100 * s['idle_share']:.0f}%, other "
            f"{100 * s['other_share']:.0f}% (host wall time)",
            f"{s['chunks']} decode calls ({s['steps']} steps), {s['prefill_calls']} prefill calls for {s['prefill_rows']} requests; "
            f"slot-steps {s['slot_steps']}: useful {100 * s['useful_share']:.1f}%, empty slot "
            f"{100 * s['empty_share']:.1f}%, past a request's end {100 * s['overrun_share']:.1f}%"]


def latency_summary(latencies: list[float]) -> dict:
    a = np.asarray(latencies, np.float64)
    return {"p50_s": float(np.percentile(a, 50)), "p99_s": float(np.percentile(a, 99))} if a.size else {}
