"""Where a decode step's time goes on the device: a profiler trace of chained decode calls of the engine, read
back per step as wall time, device busy time (union of kernel intervals), idle gaps between kernels (by size),
kernels per step, their median / p90 duration, and the kernels that take the time.

    python -m bench.decode_profile [--config configs/lm_125m.py | --run RUN] [--decode-impls jnp,fused_pallas]
                                   [--batch 1] [--steps 64] [--calls 2] [--quant int4] [--top 15] [--out DIR]
    python -m bench.decode_profile --small      # the tiny config on a CPU; what the test runs
    python -m bench.decode_profile --retnphi 1b [--token-decoder] [--quant int4] [--batch 1]
    python -m bench.decode_profile --retnphi tiny --token-decoder --small      # on a CPU; what its test runs
    python -m bench.decode_profile --run RUN --decode-impls jnp --speculative   # a verify pass beside a step

busy ~= wall: the step is bound by kernel durations (per-kernel latency at small shapes shows as many kernels
of a few µs each); busy << wall: by the gaps between kernels on the device (launch or dependency latency).
The engine is built as bench.generate builds it (hqf_jax/infer/bench_setup.py; random weights unless --run).
Per decode impl: one warm-up call (compiles), ``--calls`` chained calls of ``--steps`` steps timed without the
profiler (bytes/s, µs/step: the profiler's own cost is the difference from the traced wall), then the same
calls inside jax.profiler.trace(create_perfetto_trace=True). The trace is read by hqf_jax/infer/trace_stats.py;
with --out it is copied to DIR/trace_<impl>.json.gz (ui.perfetto.dev opens it) beside table.md and
results.json. On a CPU there are no GPU stream events: the figures are the XLA:CPU thunks' (the output says so).

--retnphi SIZE (bench.generate_retnphi's sizes: tiny, 1b): RetNPhi converted from a random decoder of that size
(hqf_jax/infer/bench_setup.py, as bench.generate_retnphi builds it) through its RecurrentEngine (bf16, --quant)
instead of the byte LM's impls; --token-decoder puts the same decoder's KV-cache step beside it (bf16; a call is
``--steps`` sampled steps from a cache prefilled once with 64 tokens, hqf_jax/infer/token_baseline.py; its bytes/s
at --bytes-per-token, assumed and said so). Each row also carries its weight MB (what a step reads once).

--speculative adds self-speculative decoding (hqf_jax/infer/speculative.py) of the byte LM as a row whose "step"
is one verify pass: a call is speculative_generate of --steps bytes a row from an 8-byte prompt (its prefill
included), at temperature 1 with one seed, so every call runs the same passes; bytes/s counts the emitted bytes.
The model needs extra heads: --run of a model trained with them, or --heads K (random heads: about one byte a
pass, and the pass's kernels are the same).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

from hqf_jax import cli
from hqf_jax import trace_stats
from hqf_jax.infer.bench_setup import (RETNPHI_SIZES, build_model, build_retnphi, engine_call, ops_per_step,
                                       retnphi_decoder, speculative_call, token_call)
from hqf_jax.infer.engine import PADDED_IMPLS, UNQUANTIZED_IMPLS, Engine
from hqf_jax.infer.recurrent import RecurrentEngine
from hqf_jax.infer.speculative import head_count
from hqf_jax.infer.token_baseline import step_weight_bytes
from hqf_jax.report import write_report


def chained(call, calls: int):
    jax.block_until_ready([call() for _ in range(calls)])


def profile(call, batch: int, steps: int, calls: int, top: int, keep: Path | None, per_step: float = 1.0) -> dict:
    """One path's figures (``call`` warm): untraced speed (``per_step`` bytes a row a step), then the traced
    calls' per-step device figures and host summary."""
    t = time.perf_counter()
    chained(call, calls)
    dt = time.perf_counter() - t
    trace = trace_stats.capture(lambda: chained(call, calls), keep)
    events, source = trace_stats.device_events(trace)
    res = dict(bytes_per_s=batch * steps * calls * per_step / dt, untraced_us=dt * 1e6 / (steps * calls), source=source,
               source_note=trace_stats.SOURCES[source], trace_file=keep.name if keep else None,
               host=trace_stats.host_summary(trace), threads=trace_stats.inventory(trace)[:20])
    if jax.default_backend() == "gpu" and source != "gpu":
        print(f"WARNING: the trace on this GPU has no 'Stream' events ({trace_stats.SOURCES[source]}): the figures "
              f"are not the GPU's kernels (CUPTI not loaded?). Threads: {res['threads'][:8]}")
    if events:
        res.update(trace_stats.summarize(events, steps * calls, top))
    return res


def verdict(r: dict) -> str:
    if "busy_frac" not in r:
        return "no device events: no verdict"
    f = r["busy_frac"]
    bound = "kernel durations" if f >= 0.8 else "gaps between kernels" if f <= 0.5 else "both (neither dominates)"
    return (f"device busy {100 * f:.0f}% of the wall: bound by {bound} ({r['events_per_step']:.0f} kernels x "
            f"median {r['median_us']:.1f} µs; idle {r['idle_us']:.1f} µs/step)")


def tables(rows: list[dict], head: str) -> str:
    out = [head, "", "| impl | weight MB | bytes/s (no profiler) | µs/step (no profiler) | wall µs/step (traced) | "
           "busy µs/step | idle µs/step | busy % | kernels/step | HLO ops/step | median µs | p90 µs | "
           "max gap µs |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['impl']} | {r['error']} |" + " |" * 11)
            continue
        ops = r.get("hlo_ops_per_step")
        if "wall_us" in r:
            dev = (f"{r['wall_us']:.1f} | {r['busy_us']:.1f} | {r['idle_us']:.1f} | {100 * r['busy_frac']:.0f}% | "
                   f"{r['events_per_step']:.1f} | {ops if ops else '-'} | {r['median_us']:.2f} | {r['p90_us']:.2f} | "
                   f"{r['max_gap_us']:.1f}")
        else:
            dev = " | ".join(["-"] * 5 + [str(ops) if ops else "-"] + ["-"] * 3)
        out.append(f"| {r['impl']} | {r['weight_mb']:,.1f} | {r['bytes_per_s']:,.0f} | {r['untraced_us']:.1f} | "
                   f"{dev} |")
    notes = {r["source_note"] for r in rows if "source" in r}
    out += ["", "Events: " + ("; ".join(f"{r['impl']}: {r['source_note']}" for r in rows if "source" in r)
                              if len(notes) > 1 else "".join(notes))]
    out += ["", "Verdict:"] + [f"- {r['impl']}: {verdict(r)}" for r in rows if "error" not in r]
    for r in (r for r in rows if "gaps" in r):
        cells = " | ".join(f"{g['per_step']:.1f} ({g['us_per_step']:.1f} µs)" for g in r["gaps"])
        e = [f"{x:g}" for x in trace_stats.GAP_EDGES_US]
        edges = [f"<{e[0]}"] + [f"{a}-{b}" for a, b in zip(e, e[1:])] + [f">={e[-1]}"]
        out += ["", f"Idle gaps of {r['impl']} per step, count (µs), by size in µs:", "",
                "| " + " | ".join(edges) + " |", "|" + "---|" * len(edges), f"| {cells} |"]
    for r in (r for r in rows if "top" in r):
        out += ["", f"Top {len(r['top'])} kernels of {r['impl']} (normalized names; share of summed kernel time):", "",
                "| kernel | per step | mean µs | µs/step | share |", "|---|---|---|---|---|"]
        out += [f"| {k['name'][:70]} | {k['per_step']:.2f} | {k['mean_us']:.2f} | {k['us_per_step']:.2f} | "
                f"{100 * k['share']:.1f}% |" for k in r["top"]]
    for r in (r for r in rows if r.get("host")):
        h = r["host"][0]
        out += ["", f"Host of {r['impl']}: busiest thread {h['thread']!r} ({h['events']} events, "
                f"{h['busy_us'] / 1e3:.2f} ms busy over the traced calls); top: "
                + ", ".join(f"{t['name'][:40]} {t['us'] / 1e3:.2f} ms" for t in h["top"][:3])]
    return "\n".join(out)


def byte_lm_paths(a, quant) -> tuple[str, list]:
    """(source, [(name, setup)]): the byte LM's engine per --decode-impls (and --speculative); ``setup()`` builds
    one and returns (warm call, weight bytes, HLO ops per step, bytes a row a step[, steps a call])."""
    model, _, source = build_model(a.config, a.set, a.run, a.heads)

    def setup(impl):
        engine = Engine(model, dtype="bfloat16", quant=quant, decode_impl=impl, quant_impl=a.quant_impl,
                        batch=a.batch, min_rows=a.min_rows, dot_rows=a.dot_rows if impl in PADDED_IMPLS else None)
        ops = None if a.no_count_ops or a.batch != 1 else ops_per_step(engine)
        return engine_call(engine, a.batch, a.steps), engine.weight_bytes(), ops, 1.0

    paths = []
    for impl in [x.strip() for x in a.decode_impls.split(",") if x.strip()]:
        if quant and impl in UNQUANTIZED_IMPLS:
            print(f"skipped {impl} {quant}: it runs unquantized weights")
            continue
        paths.append((impl + (f" {quant}" if quant else ""), lambda impl=impl: setup(impl)))
    if a.speculative:
        if not head_count(model):
            raise SystemExit("--speculative needs a model with extra heads: --run of one trained with "
                             "model.extra_heads=K, or --heads K (random heads)")

        def spec():
            engine = Engine(model, dtype="bfloat16", quant=quant, decode_impl="jnp", quant_impl=a.quant_impl,
                            batch=a.batch, min_rows=a.min_rows)
            call, passes = speculative_call(engine, a.batch, a.steps)
            return call, engine.weight_bytes(), None, a.steps / passes, passes

        paths.append((f"speculative ({head_count(model)} heads, a step = a verify pass)", spec))
    return source, paths


def retnphi_paths(a, quant) -> tuple[str, list]:
    """(source, [(name, setup)]) of --retnphi: its RecurrentEngine (bf16, --quant) and, with --token-decoder, the
    same decoder's KV-cache step (bf16); each built from a fresh random decoder (RetNPhi moves its layers)."""
    def retnphi():
        engine = RecurrentEngine(build_retnphi(retnphi_decoder(a.retnphi, "bfloat16")), dtype="bfloat16", quant=quant,
                                 quant_impl=a.quant_impl, batch=a.batch, min_rows=a.min_rows or 1)
        return engine_call(engine, a.batch, a.steps), engine.weight_bytes(), None, 1.0

    def token():
        decoder = retnphi_decoder(a.retnphi, "bfloat16")
        return token_call(decoder, a.batch, a.steps), step_weight_bytes(decoder), None, a.bytes_per_token

    paths = [(f"RetNPhi engine{' ' + quant if quant else ''}", retnphi)]
    return f"RetNPhi {a.retnphi} (random weights)", paths + ([("token decoder KV-cache", token)] if a.token_decoder
                                                             else [])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/lm_125m.py")
    p.add_argument("--set", action="append", default=[], help="a config override KEY=VALUE (repeatable)")
    p.add_argument("--run", default=None, help="a train.lm run folder (its trained weights) instead of --config")
    p.add_argument("--decode-impls", default="jnp,fused_pallas")
    p.add_argument("--quant", default="none", help="engine weight format: none (bf16), int8, int4, nf4 "
                   "(fused_gemv runs unquantized weights: skipped with a quant)")
    p.add_argument("--quant-impl", default="auto")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--min-rows", type=int, default=None, help="the engine's min_rows (default: its auto choice; 1: "
                   "the batch unpadded)")
    p.add_argument("--dot-rows", type=int, default=None, help="the fused engines' dot_rows (default: auto)")
    p.add_argument("--steps", type=int, default=64, help="decode steps per jitted call")
    p.add_argument("--calls", type=int, default=2, help="chained calls, timed and traced")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--no-count-ops", action="store_true", help="skip the HLO op count per step (one compile)")
    p.add_argument("--retnphi", default=None, choices=sorted(RETNPHI_SIZES), help="profile RetNPhi of this size "
                   "(random weights) through its RecurrentEngine instead of the byte LM")
    p.add_argument("--token-decoder", action="store_true", help="with --retnphi: the same decoder's KV-cache step "
                   "beside it")
    p.add_argument("--bytes-per-token", type=float, default=4.0, help="the token decoder's bytes/s at this (assumed)")
    p.add_argument("--speculative", action="store_true", help="also profile self-speculative decoding (the byte "
                   "LM with extra heads), per verify pass")
    p.add_argument("--heads", type=int, default=None, help="build --config with model.extra_heads=K (random heads)")
    p.add_argument("--small", action="store_true", help="the tiny config (tiny RetNPhi), 8 steps: runs on a CPU")
    p.add_argument("--out", default=None, help="write table.md, results.json and the traces here")
    a = p.parse_args(argv)
    if a.small:
        a.config, a.steps, a.retnphi = "configs/lm_tiny.py", min(a.steps, 8), a.retnphi and "tiny"
    if a.token_decoder and not a.retnphi:
        p.error("--token-decoder goes with --retnphi (bench.generate times the byte LM's same-size token decoder)")
    out = Path(a.out) if a.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    quant = None if a.quant == "none" else a.quant
    device = jax.devices()[0].device_kind
    source, paths = retnphi_paths(a, quant) if a.retnphi else byte_lm_paths(a, quant)
    rows = []
    for name, setup in paths:
        call = None
        try:
            call, weight_bytes, ops, per_step, *steps = setup()
            steps = steps[0] if steps else a.steps
            keep = out / f"trace_{name.split(' (')[0].replace(' ', '_')}.json.gz" if out else None
            r = dict(impl=name, hlo_ops_per_step=ops, weight_mb=weight_bytes / 1e6, steps_per_call=steps,
                     **profile(call, a.batch, steps, a.calls, a.top, keep, per_step))
        except Exception as e:  # noqa: BLE001 - the other paths still run; the table names the failure
            r = dict(impl=name, error=f"FAILED {type(e).__name__}: {str(e)[:200]}")
        print(f"  {name}: " + (r.get("error") or verdict(r)), flush=True)
        rows.append(r)
        del call
    head = (f"bench.decode_profile on {device}; jax {jax.__version__}; {source} batch {a.batch}; {a.calls} calls x "
            f"{a.steps} steps; bf16{' ' + quant if quant else ''}; {time.strftime('%Y-%m-%d')}"
            + (f"; the token decoder's bytes/s at {a.bytes_per_token:g} bytes/token (assumed)" if a.token_decoder
               else ""))
    text = tables(rows, head)
    print("\n" + text)
    result = dict(device=device, jax=jax.__version__, config=source, batch=a.batch, steps=a.steps, calls=a.calls,
                  quant=a.quant, bytes_per_token=a.bytes_per_token if a.token_decoder else None,
                  date=time.strftime("%Y-%m-%d"), rows=rows)
    if out:
        write_report(out, text, result)
    return result


if __name__ == "__main__":
    cli.run_main(main)
