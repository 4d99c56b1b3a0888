"""Generation speed of the byte LM: the old path (nn.generate.sample, a scan of model.step) against the
inference engine (hqf_jax.infer) in bf16 / int8 / int4 and the same-size token decoder's KV-cache generation, at
several batch sizes; each row beside its weight-read limit: batch x steps/s of one read of its weights at the copy
bandwidth measured in the same run (bytes/s; a token row's at its bytes/token), and "x token", its bytes/s over
the token decoder's at that config and batch.

    python -m bench.generate [--configs configs/lm_125m.py,configs/lm_1b.py | --run RUN] [--batches 1,8,64,256]
                             [--quants none,int8,int4] [--steps 256] [--decode-impls jnp,fused,fused_pallas]
                             [--data-paths /tmp/pysrc] [--count-ops] [--bpb-bytes 262144] [--out FILE]
    python -m bench.generate --run RUN_WITH_HEADS   # adds self-speculative rows: bytes/s, accepted bytes/verify
    python -m bench.generate --small      # the tiny config, CPU-sized; what the test runs

Timing (the house method): every figure is ``reps`` chained calls of one jitted loop of ``steps`` decode
steps, after a warm-up call, with block_until_ready only at the end; bytes/s = batch x steps x reps / time.
The old path's calls include its prefill of an 8-byte prompt (under 1% of a call at 256 steps). Parameters
are random (speed does not depend on their values) unless --run is given. Quantized engines on a GPU multiply
through pallas_kernels.quant.quant_matmul, whose ROUTES table picks the GEMV form at batch <= 2 and the
tensor-core form (int / NF4) at batch >= 8; each pick is printed once per layer shape and batch.
"compiles" counts backend compiles inside the timed calls (0 unless a call recompiles, which the timing includes).
"start s" (plain engine rows): seconds from the engine's construction (quantization and kernel layouts, for the
first batch it runs or one it was rebuilt for) to the end of its warm-up call (prefill and the decode loop traced,
lowered and compiled); a later batch on the same engine counts its warm-up alone. The --bpb-bytes and --count-ops
work between construction and warm-up is not counted; an engine rebuilt in a process that has built others reuses
what they compiled (a cold start is a process's first engine of that kind).
Token decoder (on unless --no-token; hqf_jax.infer.token_baseline): per config, a Llama-family decoder with the
byte LM's d_model, layers, MLP width and heads, attention as wide as the retention's weights, a --token-vocab
vocabulary, random bf16 weights (both parameter counts printed); a cache prefilled once (64 tokens), each call
``steps`` sampled KV-cache steps from it; tokens/s x bytes/token of a BPE on --data-paths (else assumed, said so).
--count-ops adds each decode step's op count (kernels launched, roughly) from the compiled loop's HLO on
this device; --bpb-bytes N adds each quant mode's held-out bits per byte against bf16's (same run, same
bytes; random weights without --run, where only the difference means anything).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax import cli
from hqf_jax.infer.bench_setup import build_model, ops_per_step, print_table, warm_slots
from hqf_jax.infer.engine import PADDED_IMPLS, UNQUANTIZED_IMPLS, Engine
from hqf_jax.infer.held_out import held_out_bpb, held_out_bytes, held_out_prompts
from hqf_jax.infer.token_baseline import (COMPILES, add_token_ratios, measure_bytes_per_token, read_limit,
                                          same_size_rows, timed)
from hqf_jax.nn import generate
from hqf_jax.nn.hf_loading import param_bytes
from hqf_jax.quant.kernel_timing import copy_bandwidth
from pallas_kernels.quant.layout_table import hopper


def time_old(model, batch: int, steps: int, reps: int) -> tuple[float, int]:
    """(bytes/s, compiles inside the timed calls)."""
    prompts = jnp.asarray(np.stack([generate.encode_prompt(b"The quic")] * batch))
    sec, comp = timed(lambda i: generate.sample(model, prompts, steps, jax.random.PRNGKey(i), temperature=1.0), reps)
    return batch * steps / sec, comp


def time_engine(engine: Engine, batch: int, steps: int, reps: int) -> tuple[float, int, float]:
    """(bytes/s, compiles inside the timed calls, seconds of the warm-up: prefill and the first decode call, which
    trace, lower and compile them)."""
    t = time.perf_counter()
    slots = warm_slots(engine, batch, steps)
    warm = time.perf_counter() - t
    before = COMPILES[0]
    t = time.perf_counter()
    outs = []
    for _ in range(reps):
        slots, out = engine.decode_device(slots, steps)
        outs.append(out)
    jax.block_until_ready(outs)
    return batch * steps * reps / (time.perf_counter() - t), COMPILES[0] - before, warm


def time_speculative(engine: Engine, prompts: list[bytes], steps: int, reps: int) -> tuple[float, float]:
    """(bytes/s, accepted bytes per verify pass) of self-speculative decoding, sampling at temperature 1."""
    from hqf_jax.infer.speculative import speculative_generate

    run = lambda i: speculative_generate(engine, prompts, steps, seed=i * len(prompts), temperature=1.0)
    run(0)
    t = time.perf_counter()
    per = [run(i + 1)[1]["bytes_per_verify"] for i in range(reps)]  # each call ends on the host: ids copied back
    return len(prompts) * steps * reps / (time.perf_counter() - t), float(np.mean(per))


def bench_model(a, config, bw, rows, batches, quants, impls):
    model, cfg, source = build_model(config, a.set, a.run, a.heads)
    out = []

    def add(row):  # each row as it is measured (a long run that times out still shows what it measured)
        out.append(row)
        start = f" (start {row['start_s']:.1f} s)" if row.get("start_s") is not None else ""
        print(f"  {str(config).split('/')[-1]} {row['path']} batch {row['batch']}: {row['bytes_per_s']:,.0f} bytes/s"
              f"{start}", flush=True)

    if not a.no_old:
        for b in batches:
            bps, comp = time_old(model, b, a.steps, a.reps)
            wb = param_bytes(model)  # the model's own (float32) parameters, read once a step
            add(dict(path="old (nn.generate.sample, f32 params)", batch=b, weight_bytes=wb,
                     bytes_per_s=bps, limit_bytes_per_s=read_limit(b, bw, wb), compiles=comp))
    if a.bpt:  # the same-size token decoder's KV-cache generation (hqf_jax.infer.token_baseline)
        for row in same_size_rows(model, batches, a.steps, a.reps, bw, a.bpt, a.token_vocab):
            add(row)
    data = held_out_bytes(cfg, a.bpb_bytes) if a.bpb_bytes else None
    bpb = {}
    for q, qi in [(q, qi) for q in quants for qi in (["auto"] if q == "none" else a.quant_impls.split(","))]:
        for impl in impls:
            if q != "none" and impl in UNQUANTIZED_IMPLS:
                continue  # the GEMV step runs unquantized weights (fused / fused_pallas quantize their joined dots)
            # auto on a Hopper GPU: the dispatcher lays layers out for the decode batch, so one engine per batch
            # (each row is what `--quant` gives there); elsewhere the layouts do not depend on the batch
            per_batch = q != "none" and qi == "auto" and hopper()
            try:  # a path that cannot build or compile here is reported as a row; the others still run
                t = time.perf_counter()  # start-up: quantization, layouts; the first row adds it to its warm-up
                engine = Engine(model, dtype="bfloat16", quant=None if q == "none" else q, decode_impl=impl,
                                unroll=a.unroll, quant_impl=qi, batch=batches[0])
                built = time.perf_counter() - t
                wb = engine.weight_bytes()
                if data is not None and q not in bpb:
                    try:
                        bpb[q] = held_out_bpb(engine, data, a.bpb_seq)
                    except Exception as e:  # noqa: BLE001 - the speed rows still run
                        print(f"FAILED bpb of {q}: {type(e).__name__}: {str(e)[:300]}")
                ops = ops_per_step(engine) if a.count_ops else None
            except Exception as e:  # noqa: BLE001
                print(f"FAILED engine bf16 {q} {impl}: {type(e).__name__}: {str(e)[:300]}")
                continue
            for b in batches:
                try:
                    if per_batch and b != engine.batch:
                        t = time.perf_counter()
                        engine = Engine(model, dtype="bfloat16", quant=q, decode_impl=impl, unroll=a.unroll,
                                        quant_impl=qi, batch=b)
                        built = time.perf_counter() - t
                        wb = engine.weight_bytes()
                        ops = ops_per_step(engine) if a.count_ops else None  # this batch's layouts
                    bps, comp, warm = time_engine(engine, b, a.steps, a.reps)
                    start, built = built + warm, 0.0  # a later batch on the same engine: its warm-up alone
                except Exception as e:  # noqa: BLE001
                    print(f"FAILED engine bf16 {q} {impl} batch {b}: {type(e).__name__}: {str(e)[:300]}")
                    continue
                qn = "" if q == "none" else f" {q}" + ("" if qi == "auto" else f"/{qi}")
                add(dict(path=f"engine bf16{qn} {impl}", batch=b, weight_bytes=wb, bytes_per_s=bps,
                         limit_bytes_per_s=read_limit(b, bw, wb), compiles=comp, ops_per_step=ops, bpb=bpb.get(q),
                         bpb_cost=(bpb[q] - bpb["none"]) if q in bpb and "none" in bpb else None, start_s=start))
            qn = "" if q == "none" else f" {q}" + ("" if qi == "auto" else f"/{qi}")
            # the same engine again with knobs changed: min_rows r pads the whole batch (its dots unpadded), dot_rows
            # r only the fused dots (the batch unpadded); r = 1 is the unpadded row, at every batch
            knobs = [(f"unroll {u}", {"unroll": u}, 1) for u in (a.extra_unrolls if q == "none" else [])]
            knobs += [(f"min_rows {r}", {"min_rows": r, "dot_rows": 1}, b) for r in a.min_rows for b in batches
                      if b < r or r == 1]
            if q == "none" and impl in PADDED_IMPLS:
                knobs += [(f"dot_rows {r}", {"dot_rows": r, "min_rows": 1}, b) for r in a.dot_rows for b in batches
                          if b < r or r == 1]
            for label, set_to, b in knobs:
                keep = {k: getattr(engine, k) for k in set_to}
                try:
                    if per_batch and b != engine.batch:  # this batch's layouts (as the plain rows above)
                        engine = Engine(model, dtype="bfloat16", quant=q, decode_impl=impl, unroll=a.unroll,
                                        quant_impl=qi, batch=b)
                    for k, v in set_to.items():
                        setattr(engine, k, v)
                    bps, comp, _ = time_engine(engine, b, a.steps, a.reps)
                except Exception as e:  # noqa: BLE001
                    print(f"FAILED engine bf16{qn} {impl} {label} batch {b}: {type(e).__name__}: {str(e)[:300]}")
                    continue
                finally:
                    for k, v in keep.items():
                        setattr(engine, k, v)
                add(dict(path=f"engine bf16{qn} {impl} {label}", batch=b, weight_bytes=wb, bytes_per_s=bps,
                         limit_bytes_per_s=read_limit(b, bw, wb), compiles=comp, ops_per_step=None, bpb=None,
                         bpb_cost=None))
            del engine
    # speculative rows: the module-by-module verify pass, and with fused dots when a fused impl is benched
    spec_impls = (["jnp"] + (["fused"] if any(i.startswith("fused") for i in impls) else [])
                  if model.cfg.extra_heads else [])
    for impl in spec_impls:
        engine = Engine(model, dtype="bfloat16", decode_impl=impl)
        name = "speculative" + (" fused dots" if impl != "jnp" else "")
        for b, r in [(b, r) for b in batches for r in [None] + [r for r in a.min_rows if r > b]]:
            prompts = held_out_prompts(cfg, b) if a.run else [b"The quick brown fox jumps over the lazy dog. "] * b
            engine.min_rows = r  # speculative decoding pads only at an explicit min_rows
            bps, per = time_speculative(engine, prompts, a.steps, a.reps)
            add(dict(path=f"engine bf16 {name} ({model.cfg.extra_heads} heads)" + (f" min_rows {r}" if r else ""),
                     batch=b, weight_bytes=engine.weight_bytes(), bytes_per_s=bps,
                     limit_bytes_per_s=read_limit(b, bw, engine.weight_bytes()), bytes_per_verify=per))
        del engine
    for r in out:
        r.update(config=source, heads=model.cfg.extra_heads)
    rows.extend(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/lm_125m.py")
    p.add_argument("--configs", default=None, help="comma-separated configs, each benched in turn (overrides --config)")
    p.add_argument("--set", action="append", default=[],
                   help="a config override KEY=VALUE (repeatable), e.g. data.source=files data.paths=/tmp/pysrc")
    p.add_argument("--run", default=None, help="a train.lm run folder (its trained weights) instead of --config")
    p.add_argument("--batches", default="1,8,64,256")
    p.add_argument("--quants", default="none,int8,int4", help="engine weight formats: none (bf16), int8, int4, nf4")
    p.add_argument("--decode-impls", default="jnp,fused,fused_pallas",
                   help="jnp, pallas (the step kernel), fused (one projection dot; XLA mixer), fused_pallas, "
                   "fused_pallas_split (the mixer kernel on column blocks of the state), fused_gemv (every projection "
                   "a Pallas GEMV with norm / silu*up / residual fused in)")
    p.add_argument("--quant-impls", default="auto", help="quantized layers' kernels, each benched: auto, pallas "
                   "(Triton forms), mosaic (Hopper, int4/int8/NF4/phi4), reference")
    p.add_argument("--steps", type=int, default=256, help="decode steps per jitted call")
    p.add_argument("--reps", type=int, default=3, help="chained calls per timing")
    p.add_argument("--unroll", type=int, default=1, help="decode-loop unroll (fewer loop-condition round trips)")
    p.add_argument("--extra-unrolls", default="", help="e.g. 4,8: unquantized paths again at batch 1 with the "
                   "decode loop unrolled that many times")
    p.add_argument("--dot-rows", default="", help="e.g. 1,16: the fused paths again at each batch below it with "
                   "their XLA dots padded to that many rows and the batch not (Engine(dot_rows=..., min_rows=1); 1: "
                   "no padding at all, at every batch)")
    p.add_argument("--min-rows", default="", help="e.g. 1,8: every path again at each batch below it with the "
                   "whole decode batch padded to that many rows (Engine(min_rows=..., dot_rows=1); 1: no padding at "
                   "all, at every batch; the plain rows take the engine's auto choice)")
    p.add_argument("--count-ops", action="store_true", help="ops per decode step from the compiled HLO")
    p.add_argument("--bpb-bytes", type=int, default=0, help="held-out bytes for each quant mode's bpb (0: off)")
    p.add_argument("--bpb-seq", type=int, default=2048)
    p.add_argument("--no-old", action="store_true", help="skip the old path")
    p.add_argument("--no-token", action="store_true", help="skip the same-size token decoder's rows")
    p.add_argument("--token-vocab", type=int, default=32000, help="the token decoder's (and its BPE's) vocabulary")
    p.add_argument("--data-paths", default=None, help="a folder of .py files the BPE is trained on (--bpe-mb MB) and "
                   "its bytes per token measured on (the next MB); without it --bytes-per-token, assumed and said so")
    p.add_argument("--bpe-mb", type=float, default=8.0)
    p.add_argument("--bytes-per-token", type=float, default=4.0)
    p.add_argument("--copy-mib", type=int, default=2048, help="array size of the copy-bandwidth probe")
    p.add_argument("--heads", type=int, default=None,
                   help="build --config with model.extra_heads=K (random heads: acceptance means nothing; use "
                        "--run with a model trained with heads for the accepted-bytes figure)")
    p.add_argument("--small", action="store_true", help="the tiny config, batch 2, 8 steps, 2 heads: runs on a CPU")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    a = p.parse_args(argv)
    if a.small:
        a.config, a.batches, a.steps, a.reps, a.copy_mib, a.quants = "configs/lm_tiny.py", "2", 8, 2, 16, "none,int8"
        a.heads = 2 if a.heads is None else a.heads
        a.bpb_seq, a.token_vocab, a.bpe_mb = min(a.bpb_seq, 128), min(a.token_vocab, 512), min(a.bpe_mb, 0.05)
    a.bpt, how = (None, "-") if a.no_token else measure_bytes_per_token(a.data_paths, a.token_vocab, a.bpe_mb,
                                                                          a.bytes_per_token)
    if a.bpt:
        print(f"bytes/token {a.bpt:.2f} ({how})", flush=True)  # now: a run cut short keeps it
    batches = [int(b) for b in a.batches.split(",")]
    a.extra_unrolls = [int(u) for u in a.extra_unrolls.split(",") if u.strip()]
    a.dot_rows = [int(r) for r in a.dot_rows.split(",") if r.strip()]
    a.min_rows = [int(r) for r in a.min_rows.split(",") if r.strip()]
    quants = [q.strip() for q in a.quants.split(",")]
    if any(q != "none" for q in quants):  # quantized layers: print the kernel form the dispatcher picks per shape
        os.environ.setdefault("HQF_QUANT_DISPATCH", "print")  # and batch (pallas_kernels/quant/dispatch.py ROUTES)
    impls = [x.strip() for x in a.decode_impls.split(",")]
    device = jax.devices()[0].device_kind
    bw = copy_bandwidth(a.copy_mib << 20, 20 if not a.small else 3)
    rows = []
    for config in (a.configs.split(",") if a.configs and not a.run else [a.config]):
        bench_model(a, config, bw, rows, batches, quants, impls)
    add_token_ratios(rows)
    for r in rows:
        r.update(device=device, steps=a.steps, copy_gb_s=bw / 1e9, date=time.strftime("%Y-%m-%d"))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"\nbench.generate on {device}; copy bandwidth {bw / 1e9:.0f} GB/s; {a.steps} steps x {a.reps} calls; "
          f"unroll {a.unroll}; {time.strftime('%Y-%m-%d')}; bytes/token {a.bpt or 0:.2f} ({how})")
    print_table(rows)
    return rows


if __name__ == "__main__":
    cli.run_main(main)
