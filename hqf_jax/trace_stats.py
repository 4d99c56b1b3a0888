"""Device time from a profiler trace: the Chrome/Perfetto JSON that jax.profiler writes beside its xplane
(``<log_dir>/plugins/profile/<run>/perfetto_trace.json.gz`` with create_perfetto_trace=True, and
``<host>.trace.json.gz`` always). Pure functions of the parsed JSON (``capture`` and ``load`` excepted): which
events ran on the device, the union of their intervals (busy time), the idle gaps between them, kernel durations, and the
kernels that take the time grouped by a normalized name. bench.decode_profile reports them per decode step:
busy ~= wall says the step is bound by kernel durations, busy << wall by the gaps between kernels.

Device events: the complete ("X") events on the "Stream #..." threads of a "/device:GPU:N" process (the CUPTI
kernels, memcpys and memsets; the derived lines of that process, "XLA Ops", "XLA Modules", ..., repeat them
and are left out). A trace without them (XLA:CPU) falls back to the XLA:CPU thunk events (host events that
carry an ``hlo_op``; a thunk that holds others on its thread, a while loop, is left out for its body).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np

GAP_EDGES_US = (1.0, 5.0, 20.0, 100.0)  # idle gaps are binned <1, 1-5, 5-20, 20-100, >=100 µs
DERIVED = re.compile(r"XLA |Framework|TensorFlow|Steps|Source|Launch|Async")  # lines that repeat the streams'
SOURCES = {"gpu": "GPU stream events (kernels, memcpy, memset)",
           "gpu_unnamed": "GPU events of threads not named 'Stream ...' (check the trace: thread names changed?)",
           "cpu_thunks": "no GPU stream events in this trace: XLA:CPU thunk events on the host threads instead",
           "none": "no device events and no XLA:CPU thunk events in this trace"}


def load(log_dir: str | Path) -> tuple[dict, Path]:
    """(parsed trace, its file): the newest run folder's perfetto_trace.json.gz, else its *.trace.json.gz."""
    runs = sorted((Path(log_dir) / "plugins" / "profile").glob("*"), key=lambda p: p.stat().st_mtime)
    for run in reversed(runs):
        for pattern in ("perfetto_trace.json.gz", "*.trace.json.gz"):
            for f in sorted(run.glob(pattern)):
                with gzip.open(f, "rt") as fh:
                    return json.load(fh), f
    raise FileNotFoundError(f"no perfetto_trace.json.gz or *.trace.json.gz under {log_dir}/plugins/profile "
                            f"(jax.profiler.trace(..., create_perfetto_trace=True) writes one)")


def capture(fn, keep: str | Path | None = None) -> dict:
    """The parsed trace of running ``fn()`` under jax.profiler.trace(create_perfetto_trace=True) (fn should block
    on its results); with ``keep``, the trace file is also copied there."""
    import shutil
    import tempfile

    import jax

    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            fn()
        trace, f = load(d)
        if keep is not None:
            shutil.copy(f, keep)
    return trace


def names(trace: dict) -> tuple[dict, dict]:
    """({pid: process name}, {(pid, tid): thread name}) from the trace's metadata events."""
    procs, threads = {}, {}
    for e in trace.get("traceEvents", []):
        if e.get("ph") == "M" and e.get("name") == "process_name":
            procs[e["pid"]] = e.get("args", {}).get("name", "")
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e.get("tid"))] = e.get("args", {}).get("name", "")
    return procs, threads


def _complete(trace: dict) -> list[dict]:
    return [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "ts" in e and "dur" in e]


def _leaves(events: list[dict]) -> list[dict]:
    """Events that hold no other event of the same thread inside their interval."""
    out = []
    by_thread: dict = {}
    for e in events:
        by_thread.setdefault((e["pid"], e.get("tid")), []).append(e)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        for i, e in enumerate(evs):
            end = e["ts"] + e["dur"]
            nxt = evs[i + 1] if i + 1 < len(evs) else None
            if nxt is None or not (nxt["ts"] < end and nxt["ts"] + nxt["dur"] <= end):
                out.append(e)
    return sorted(out, key=lambda e: e["ts"])


def device_events(trace: dict) -> tuple[list[dict], str]:
    """(events sorted by start, source): the GPU stream events; without them the XLA:CPU thunk leaves
    (source "cpu_thunks"); else ([], "none"). See the module docstring; "gpu_unnamed": a GPU process
    without "Stream" threads, its events but those of the derived lines (DERIVED)."""
    procs, threads = names(trace)
    gpu = {p for p, n in procs.items() if "GPU" in n.upper()}
    events = _complete(trace)
    stream = [e for e in events if e["pid"] in gpu and threads.get((e["pid"], e.get("tid")), "").startswith("Stream")]
    if stream:
        return sorted(stream, key=lambda e: e["ts"]), "gpu"
    other = [e for e in events if e["pid"] in gpu and not DERIVED.match(threads.get((e["pid"], e.get("tid")), ""))]
    if other:  # a GPU process whose threads are not named "Stream ...": its lines but the derived ones
        return sorted(other, key=lambda e: e["ts"]), "gpu_unnamed"
    thunks = [e for e in events if e["pid"] not in gpu and "hlo_op" in e.get("args", {})]
    if thunks:
        return _leaves(thunks), "cpu_thunks"
    return [], "none"


def normalize(name: str) -> str:
    """A kernel's name without what varies between instances: a leading "void ", template and argument lists,
    numeric suffixes (fusion.123 -> fusion, loop_add_fusion_2 -> loop_add_fusion)."""
    n = re.sub(r"^void ", "", name.strip())
    n = re.split(r"[<(]", n, maxsplit=1)[0] or n
    prev = None
    while prev != n:
        prev, n = n, re.sub(r"[._:-]\d+$", "", n)
    return n


def union(intervals) -> list[tuple[float, float]]:
    """Sorted, disjoint (start, end) intervals covering the same points as ``intervals``."""
    merged: list[list[float]] = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def summarize(events: list[dict], steps: int, top: int = 15) -> dict:
    """Per-step figures of ``events`` (ts/dur in µs) that span ``steps`` decode steps: wall (first start to last
    end), busy (union of the intervals), idle (wall - busy) and its gaps by size, events per step, median/p90
    duration, and the ``top`` normalized names by total time (count per step, mean µs, share of the summed
    event time)."""
    if not events:
        raise ValueError("no events to summarize")
    spans = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in events]
    merged = union(spans)
    wall = merged[-1][1] - merged[0][0]
    busy = sum(e - s for s, e in merged)
    gaps = np.array([b[0] - a[1] for a, b in zip(merged, merged[1:])], dtype=np.float64)
    durs = np.array([float(e["dur"]) for e in events], dtype=np.float64)
    edges = (0.0,) + GAP_EDGES_US + (np.inf,)
    gap_bins = []
    for lo, hi in zip(edges, edges[1:]):
        sel = gaps[(gaps >= lo) & (gaps < hi)]
        gap_bins.append(dict(range_us=[lo, None if np.isinf(hi) else hi], per_step=len(sel) / steps,
                             us_per_step=float(sel.sum()) / steps))
    groups: dict = {}
    for e in events:
        g = groups.setdefault(normalize(e["name"]), [0, 0.0])
        g[0] += 1
        g[1] += float(e["dur"])
    total = float(durs.sum())
    kernels = [dict(name=n, count=c, per_step=c / steps, mean_us=t / c, us_per_step=t / steps,
                    share=t / total if total else 0.0)
               for n, (c, t) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:top]]
    return dict(steps=steps, events=len(events), wall_us=wall / steps, busy_us=busy / steps,
                idle_us=(wall - busy) / steps, busy_frac=busy / wall if wall else 1.0,
                summed_us=total / steps, events_per_step=len(events) / steps,
                median_us=float(np.median(durs)), p90_us=float(np.percentile(durs, 90)),
                max_gap_us=float(gaps.max()) if len(gaps) else 0.0, gaps=gap_bins, top=kernels)


def inventory(trace: dict) -> list[dict]:
    """Every thread with complete events, most events first: process, thread, events (what a reader checks
    when the device events are not where device_events looks)."""
    procs, threads = names(trace)
    count: dict = {}
    for e in _complete(trace):
        count[(e["pid"], e.get("tid"))] = count.get((e["pid"], e.get("tid")), 0) + 1
    return [dict(process=procs.get(k[0], str(k[0])), thread=threads.get(k, str(k[1])), events=n)
            for k, n in sorted(count.items(), key=lambda kv: -kv[1])]


def host_summary(trace: dict, top: int = 5) -> list[dict]:
    """Per host thread (threads of processes that are not a GPU): event count, busy time (union, µs) and the
    ``top`` event names by total time: what the host did while the device ran."""
    procs, threads = names(trace)
    by: dict = {}
    for e in _complete(trace):
        if "GPU" not in procs.get(e["pid"], "").upper():
            by.setdefault((e["pid"], e.get("tid")), []).append(e)
    out = []
    for key, evs in sorted(by.items(), key=lambda kv: -len(kv[1])):
        tot: dict = {}
        for e in evs:
            tot[e["name"]] = tot.get(e["name"], 0.0) + float(e["dur"])
        busy = sum(b - a for a, b in union((e["ts"], e["ts"] + e["dur"]) for e in evs))
        out.append(dict(process=procs.get(key[0], str(key[0])), thread=threads.get(key, str(key[1])),
                        events=len(evs), busy_us=busy,
                        top=[dict(name=n, us=t) for n, t in sorted(tot.items(), key=lambda kv: -kv[1])[:top]]))
    return out
