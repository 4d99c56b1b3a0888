"""Continuous batching over the engine: a fixed number of slots, one decode loop for all of them.

Requests wait in a queue. At each chunk boundary the loop takes as many waiting requests as there are free
slots, prefills them together (one prefill call per prompt-length bucket, row i for slot i; each row has the
padding and positions it has when prefilled alone, so its numbers do not depend on who else waits), writes
them into their slots, runs ``chunk`` steps (fewer with ``min_chunk``, see ``_loop``) for every slot in one
jitted call, and hands each active request its bytes.
A request's slot is free once its last chunk is dispatched; idle slots ride along (their rows are computed and
dropped). A request's output equals ``Engine.generate`` of it alone: rows never mix and each row samples with
its own seed. ``loop_stats`` (hqf_jax.infer.batch_stats) says where the loop's time goes.
"""

from __future__ import annotations

import queue
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax.infer.batch_stats import LoopStats
from hqf_jax.infer.engine import Engine, Settings
from hqf_jax.infer.requests import Request


class Batcher:
    def __init__(self, engine: Engine, slots: int = 8, chunk: int = 16, profile: bool = False,
                 min_chunk: int | None = None):
        if slots < 1 or chunk < 1:
            raise ValueError(f"the batcher needs slots >= 1 and chunk >= 1; got slots={slots}, chunk={chunk}")
        self.engine, self.num_slots, self.chunk = engine, int(slots), int(chunk)
        # shorter calls (chunk / 2^k, >= min_chunk) end a request inside a chunk when another waits for its slot
        self.min_chunk = self.chunk if min_chunk is None else max(1, min(int(min_chunk), self.chunk))
        self.pending: queue.Queue[Request] = queue.Queue()
        self.active: list[Request | None] = [None] * self.num_slots
        self.state = engine.prefill([b""] * self.num_slots, Settings.make(self.num_slots))
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.steps = 0  # decode chunks run
        self.profile = bool(profile)  # wait for the device after each phase (batch_stats: device time per phase)
        self.loop_stats = LoopStats()
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

    def lengths(self) -> list[int]:
        """The decode call lengths the loop may use (each compiled once): chunk, chunk/2, ... >= min_chunk."""
        out = [self.chunk]
        while out[-1] // 2 >= self.min_chunk:
            out.append(out[-1] // 2)
        return out

    def warmup(self):
        """Compile every decode call length now rather than the first time the loop needs it."""
        for n in self.lengths():
            jax.block_until_ready(self.engine.decode_device(self.state, n))

    def reset_stats(self) -> LoopStats:
        """Start a new ``LoopStats`` (e.g. after a warm-up); returns the old one."""
        old, self.loop_stats = self.loop_stats, LoopStats()
        return old

    def stop(self):
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ the loop

    def _admit(self):
        """Fill free slots from the queue: every newcomer of one prompt-length bucket in one prefill call."""
        joins = []
        for slot in range(self.num_slots):
            held = self.active[slot]
            if held is not None and held.dispatched < held.max_tokens:
                continue  # busy; a slot whose request is complete once the chunk in flight lands is free now
            try:
                joins.append((slot, self.pending.get_nowait()))
            except queue.Empty:
                break
        groups: dict[int, list] = {}
        for slot, req in joins:  # the engine pads a prompt to a multiple of prompt_bucket (BOS included)
            groups.setdefault(-(-(len(req.prompt) + 1) // self.engine.prompt_bucket), []).append((slot, req))
        for group in groups.values():
            try:
                self.state = self.join(self.state, group)
                self.loop_stats.prefill_calls += 1
                self.loop_stats.prefill_rows += len(group)
            except Exception:  # prefill each alone: a request that fails, fails alone
                for slot, req in group:
                    self._admit_alone(slot, req)
                continue
            for slot, req in group:
                self.active[slot] = req
        if joins and self.profile:
            jax.block_until_ready(self.state)

    def join(self, state, group):
        """``state`` with each (slot, request) of ``group`` prefilled into its slot, in one prefill call of
        ``slots`` rows (row i for slot i; free rows hold an empty prompt and are dropped). The prompts share
        a length bucket, so each row has the padding and positions it has when prefilled alone (its state
        equals the state alone: tests/test_infer_batcher.py)."""
        prompts, seeds = [b""] * self.num_slots, [0] * self.num_slots
        temps, top_ks, top_ps = [0.0] * self.num_slots, [0] * self.num_slots, [1.0] * self.num_slots
        mask = np.zeros(self.num_slots, bool)
        for slot, r in group:
            prompts[slot], seeds[slot], temps[slot], top_ks[slot], top_ps[slot] = \
                r.prompt, r.seed, r.temperature, r.top_k, r.top_p
            mask[slot] = True
        new = self.engine.prefill(prompts, Settings.make(self.num_slots, seeds, temps, top_ks, top_ps))
        return _merge(state, new, mask)

    def _admit_alone(self, slot, req):
        try:
            new = self.engine.prefill([req.prompt], Settings.make(1, [req.seed], req.temperature, req.top_k,
                                                                  req.top_p))
            self.state = self.engine.put(self.state, new, [slot])
        except Exception as e:  # this request fails alone; the others keep their slots
            req.error = f"prefill failed: {type(e).__name__}: {e}"
            req.out.put(None)
            return
        self.loop_stats.prefill_calls += 1
        self.loop_stats.prefill_rows += 1
        self.active[slot] = req

    def _deliver(self, ids, snapshot):
        """Hand out one finished chunk (ids on the device) to the requests that were in the slots when it ran."""
        with self.loop_stats.timed("wait_s"):
            ids = np.asarray(ids)
        with self.loop_stats.timed("deliver_s"):
            self._hand_out(ids, snapshot)

    def _hand_out(self, ids, snapshot):
        now = time.perf_counter()
        for slot, req in enumerate(snapshot):
            if req is None or req.emitted >= req.max_tokens:
                continue  # a slot that was free, or a request already complete (its extra chunk is dropped)
            take = min(ids.shape[1], req.max_tokens - req.emitted)
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
        request as soon as its last chunk is dispatched (before that chunk's bytes land). With min_chunk <
        chunk, a request that ends inside the next chunk while another waits gets a shorter call (the shortest
        of ``lengths()`` that holds its last bytes), so its slot is not computed empty for the rest."""
        inflight = None
        while not self._stop.is_set():
            try:
                with self.loop_stats.timed("prefill_s"):
                    self._admit()
                if not any(self.active) and inflight is None:
                    with self.loop_stats.timed("idle_s"):
                        self._wake.wait(timeout=0.5)
                        self._wake.clear()
                    continue
                nxt = None
                live = [r for r in self.active if r is not None and r.dispatched < r.max_tokens]
                if live:
                    with self.loop_stats.timed("decode_s"):
                        nxt = self._dispatch(live, self._steps(live))
                if inflight is not None:
                    self._deliver(*inflight)
                inflight = nxt
            except Exception as e:  # never leave a client waiting: fail every request in flight, keep serving
                self._fail(inflight, f"generation failed: {type(e).__name__}: {e}")
                inflight = None
        self._fail(inflight, "the server is shutting down")

    def _steps(self, live) -> int:
        if self.min_chunk >= self.chunk or self.pending.empty():
            return self.chunk
        left = min(r.max_tokens - r.dispatched for r in live)
        return min((n for n in self.lengths() if n >= left), default=self.chunk)

    def _dispatch(self, live, n: int):
        """Run ``n`` steps for every slot; count its slot-steps; (ids on the device, the requests it serves)."""
        self.state, dev = self.engine.decode_device(self.state, n)
        if self.profile:
            jax.block_until_ready(dev)
        self.steps += 1
        st = self.loop_stats
        st.chunks += 1
        st.steps += n
        st.empty += (self.num_slots - len(live)) * n
        for r in live:
            take = min(n, r.max_tokens - r.dispatched)
            st.useful += take
            st.overrun += n - take
            r.dispatched += n
        ids = {id(r) for r in live}
        return dev, [r if id(r) in ids else None for r in self.active]

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


@jax.jit
def _merge(old, new, mask):
    """Rows of ``new`` where ``mask`` (B,) is set, rows of ``old`` elsewhere."""
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), b, a), old, new)
