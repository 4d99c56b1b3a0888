"""Continuous batching over the engine: a fixed number of slots, one decode loop for all of them.

Requests wait in a queue; between decode chunks the loop prefills each newcomer alone (so its numbers do not
depend on who else is waiting), puts its state into a free slot, runs ``chunk`` steps for every slot in one
jitted call, and hands each active request its bytes. A finished request frees its slot at once; idle slots
ride along (their rows are computed and dropped). A request's output equals ``Engine.generate`` of it alone:
rows never mix and each row samples with its own seed.
"""

from __future__ import annotations

import codecs
import dataclasses
import queue
import threading
import time

import numpy as np

from hqf_jax.infer.engine import Engine, Settings


@dataclasses.dataclass
class Request:
    prompt: bytes
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    out: queue.Queue = dataclasses.field(default_factory=queue.Queue)  # bytes chunks, then None
    emitted: int = 0
    dispatched: int = 0  # bytes asked of the device so far (emitted + the chunk in flight)
    submitted: float = dataclasses.field(default_factory=time.perf_counter)
    first_byte: float | None = None
    error: str | None = None

    def chunks(self):
        """Yield the output as bytes chunks until the request ends (raises on a server error)."""
        while True:
            item = self.out.get()
            if item is None:
                if self.error:
                    raise RuntimeError(self.error)
                return
            yield item

    def result(self) -> bytes:
        return b"".join(self.chunks())


class Batcher:
    def __init__(self, engine: Engine, slots: int = 8, chunk: int = 16):
        if slots < 1 or chunk < 1:
            raise ValueError(f"the batcher needs slots >= 1 and chunk >= 1; got slots={slots}, chunk={chunk}")
        self.engine, self.num_slots, self.chunk = engine, int(slots), int(chunk)
        self.pending: queue.Queue[Request] = queue.Queue()
        self.active: list[Request | None] = [None] * self.num_slots
        self.state = engine.prefill([b""] * self.num_slots, Settings.make(self.num_slots))
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.steps = 0  # decode chunks run
        self._thread = threading.Thread(target=self._loop, name="hqf-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    def submit(self, req: Request) -> Request:
        if self._stop.is_set():
            raise RuntimeError("the batcher is stopped")
        if req.max_tokens <= 0:
            req.out.put(None)
            return req
        self.pending.put(req)
        self._wake.set()
        return req

    def stats(self) -> dict:
        return {"slots": self.num_slots, "active": sum(r is not None for r in self.active),
                "queued": self.pending.qsize(), "chunks": self.steps}

    def stop(self):
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ the loop

    def _admit(self):
        for slot in range(self.num_slots):
            held = self.active[slot]
            if held is not None and held.dispatched < held.max_tokens:
                continue  # busy; a slot whose request is complete once the chunk in flight lands is free now
            try:
                req = self.pending.get_nowait()
            except queue.Empty:
                return
            try:
                settings = Settings.make(1, [req.seed], req.temperature, req.top_k, req.top_p)
                new = self.engine.prefill([req.prompt], settings)
                self.state = self.engine.put(self.state, new, [slot])
            except Exception as e:  # this request fails alone; the others keep their slots
                req.error = f"prefill failed: {type(e).__name__}: {e}"
                req.out.put(None)
                continue
            self.active[slot] = req

    def _deliver(self, ids, snapshot):
        """Hand out one finished chunk (ids on the device) to the requests that were in the slots when it ran."""
        ids = np.asarray(ids)
        now = time.perf_counter()
        for slot, req in enumerate(snapshot):
            if req is None or req.emitted >= req.max_tokens:
                continue  # a slot that was free, or a request already complete (its extra chunk is dropped)
            take = min(self.chunk, req.max_tokens - req.emitted)
            req.first_byte = req.first_byte or now
            req.out.put(bytes(int(i) for i in ids[slot, :take]))
            req.emitted += take
            if req.emitted >= req.max_tokens:
                req.out.put(None)
                if self.active[slot] is req:
                    self.active[slot] = None

    def _loop(self):
        """Pipelined: chunk k+1 is dispatched before chunk k's ids are copied to the host, so the device never
        waits on the host. A request is dispatched only for the bytes it still needs, and its slot takes the next
        request as soon as its last chunk is dispatched (before that chunk's bytes land)."""
        inflight = None
        while not self._stop.is_set():
            try:
                self._admit()
                if not any(self.active) and inflight is None:
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                nxt = None
                live = [r for r in self.active if r is not None and r.dispatched < r.max_tokens]
                if live:
                    self.state, dev = self.engine.decode_device(self.state, self.chunk)
                    self.steps += 1
                    for r in live:
                        r.dispatched += self.chunk
                    ids = {id(r) for r in live}
                    nxt = (dev, [r if id(r) in ids else None for r in self.active])
                if inflight is not None:
                    self._deliver(*inflight)
                inflight = nxt
            except Exception as e:  # never leave a client waiting: fail every request in flight, keep serving
                self._fail(inflight, f"generation failed: {type(e).__name__}: {e}")
                inflight = None
        self._fail(inflight, "the server is shutting down")

    def _fail(self, inflight, message: str):
        """End every unfinished request (in a slot, or waiting for the chunk in flight) with ``message``."""
        seen, reqs = set(), []
        for r in list(self.active) + (list(inflight[1]) if inflight else []):
            if r is not None and id(r) not in seen and r.emitted < r.max_tokens:
                seen.add(id(r))
                reqs.append(r)
        for req in reqs:
            req.error = message
            req.out.put(None)
        self.active = [None] * self.num_slots


def utf8_pieces(chunks):
    """Text pieces of a byte stream, never splitting a UTF-8 character across pieces (bad bytes -> U+FFFD)."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for c in chunks:
        text = dec.decode(c)
        if text:
            yield text
    tail = dec.decode(b"", final=True)
    if tail:
        yield tail


def latency_summary(latencies: list[float]) -> dict:
    a = np.asarray(latencies, np.float64)
    return {"p50_s": float(np.percentile(a, 50)), "p99_s": float(np.percentile(a, 99))} if a.size else {}
