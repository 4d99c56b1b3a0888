"""Generation speed of RetNPhi (a converted decoder, random-init at the given size: speed does not depend on
the values) through the engine (hqf_jax.infer.recurrent) against the old path (nn.generate.sample) and the
same-size token decoder's KV-cache generation in bytes/s at a measured bytes per token; each row beside its
weight-read limit, as bench.generate's table: batch x bytes per step at one read a step of the weights that row's
step reads (the engine's parameters as cast / quantized for inference; the token decoder's, at its bytes per token)
at the copy bandwidth measured in the same run, and "x token", its bytes/s over the token decoder's at that batch.

    python -m bench.generate_retnphi [--size 1b] [--batches 1,8,64] [--quants none,int8,int4] [--steps 256]
                                     [--data-paths /tmp/pysrc] [--copy-mib 2048]
    python -m bench.generate_retnphi --small      # tiny decoder, runs on a CPU (what the test runs)
    python -m bench.generate_retnphi --batches 1 --no-old --data-paths /tmp/pysrc --spec-heads 3 --head-steps 400

--spec-heads K: K extra byte heads trained alone (hqf_jax.trainer.extra_heads) on --head-mb MB of --data-paths; at
every batch a self-speculative row per --quants engine (held-out prompts), at batch 1 its acceptance, the verify pass's cost, the
break-even bytes/verify. The random base's acceptance is NOT a trained RetNPhi's; the verify cost carries over.

Bytes per token: a BPE tokenizer (tokenizers) trained with the decoder's vocabulary size on the first
``--bpe-mb`` MB of the .py files under --data-paths, measured on the next MB; --bytes-per-token (assumed, and
said so) when no data is given. Timing: ``reps`` chained calls of one jitted loop after a warm-up call;
"compiles" counts backend compiles inside the timed calls (must be 0: a recompile per call is what made an
earlier bench report 136 B/s). Both, and the KV-cache timing, are hqf_jax.infer.token_baseline's (shared with
bench.generate). "start s" (engine rows): seconds outside the timed calls, from a quantized engine's construction
(the --dtype engine is built once, before: its rows count prefill and the warm-up call). The old path reads the --dtype
engine's cast parameters; a speculative row is put beside the plain
step's limit (a verify pass reads the weights once, as a step).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax import cli
from hqf_jax.infer.bench_setup import RETNPHI_SIZES, build_retnphi, print_table, retnphi_decoder
from hqf_jax.infer.engine import Settings
from hqf_jax.infer.recurrent import RecurrentEngine
from hqf_jax.infer.speculative import speculative_generate
from hqf_jax.infer.token_baseline import (add_token_ratios, kv_cache_tokens_per_s, measure_bytes_per_token,
                                          read_bytes, read_limit, step_weight_bytes, timed)
from hqf_jax.nn import generate
from hqf_jax.quant.kernel_timing import copy_bandwidth
from hqf_jax.trainer.extra_heads import fit_extra_heads, held_out_windows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1b", choices=sorted(RETNPHI_SIZES))
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--data-paths", default=None, help="a folder of .py files for the bytes-per-token tokenizer")
    p.add_argument("--bpe-mb", type=float, default=8.0)
    p.add_argument("--bytes-per-token", type=float, default=4.0, help="used (and said so) without --data-paths")
    p.add_argument("--no-old", action="store_true")
    p.add_argument("--quants", default="none", help="engine weight formats, each a row per batch: none, int8, int4, "
                   "nf4 (quant_impl auto: each layer's kernels picked for the row's batch)")
    p.add_argument("--spec-heads", type=int, default=0, help="K extra heads trained alone, then speculative rows "
                   "at every batch (needs --data-paths; random base: acceptance not representative)")
    for name, kind, default in (("steps", int, 400), ("batch", int, 16), ("seq", int, 256), ("lr", float, 1e-3)):
        p.add_argument(f"--head-{name}", type=kind, default=default, help="the heads' training")
    p.add_argument("--head-mb", type=float, default=16.0,
                   help="MB of training bytes for the heads; the next MB is held out")
    p.add_argument("--spec-prompts", type=int, default=8, help="held-out prompts (64 bytes) for the acceptance")
    p.add_argument("--project-accept", type=float, default=2.25, help="bytes/verify to project speed at (2.25: the "
                   "trained 125M byte LM's with 3 heads at batch 1, docs/BENCHMARKS.md)")
    p.add_argument("--min-rows", default="", help="e.g. 8: the engine and token decoder rows again at each batch "
                   "below it with the decode batch padded to that many rows (RecurrentEngine(min_rows=...); the token "
                   "decoder runs that many rows and counts the batch's)")
    p.add_argument("--copy-mib", type=int, default=2048, help="array size of the copy-bandwidth probe")
    p.add_argument("--small", action="store_true")
    a = p.parse_args(argv)
    if a.small:
        a.size, a.steps, a.reps, a.dtype, a.bpe_mb, a.quants = "tiny", 8, 2, "float32", 0.05, "none,int8"
        a.copy_mib = min(a.copy_mib, 16)
        a.batches = "1,2" if a.spec_heads else "2"
        a.head_steps, a.head_batch, a.head_seq, a.head_mb, a.spec_prompts = min(a.head_steps, 30), 4, 32, 0.05, 2
    batches = [int(b) for b in a.batches.split(",")]
    a.min_rows = [int(r) for r in a.min_rows.split(",") if r.strip()]
    device = jax.devices()[0].device_kind
    bw = copy_bandwidth(a.copy_mib << 20, 20 if not a.small else 3)
    decoder = retnphi_decoder(a.size, a.dtype)
    bpt, how = measure_bytes_per_token(a.data_paths, decoder.cfg.vocab_size, a.bpe_mb, a.bytes_per_token)
    rows, tok_wb = [], step_weight_bytes(decoder)

    def row(path, b, bps, comp, wb, per_step=1.0, start_s=None):  # bench.generate's row, beside its read limit
        rows.append(dict(config=f"retnphi {a.size}", path=path, batch=b, bytes_per_s=bps, compiles=comp,
                         weight_bytes=wb, limit_bytes_per_s=read_limit(b, bw, wb, per_step), start_s=start_s))
        start = "" if start_s is None else f" (start {start_s:.1f} s)"
        print(f"  {path} batch {b}: {bps:,.0f} bytes/s{start}", flush=True)
        return rows[-1]

    for b in batches:
        tps, comp = kv_cache_tokens_per_s(decoder, b, a.steps, a.reps)
        row("token decoder KV-cache", b, tps * bpt, comp, tok_wb, bpt)
        for r in [r for r in a.min_rows if b < r]:  # the baseline padded alike: r rows run, b of them counted
            tps, comp = kv_cache_tokens_per_s(decoder, r, a.steps, a.reps)
            row(f"token decoder KV-cache min_rows {r}", b, tps * bpt * b / r, comp, tok_wb, bpt)
    model = build_retnphi(decoder, a.spec_heads)
    del decoder
    fit, held, specs = None, None, []
    if a.spec_heads:
        data = read_bytes(a.data_paths, a.head_mb + 1)
        if not data.size:
            raise SystemExit(f"--spec-heads trains the heads on real bytes: no .py files under --data-paths="
                             f"{a.data_paths!r}")
        held = data[(cut := min(int(a.head_mb * 2**20), int(len(data) * 0.9))):]  # a small folder: 10% held out
        fit = fit_extra_heads(model, data[:cut], held, steps=a.head_steps, batch=a.head_batch, seq_len=a.head_seq,
                              lr=a.head_lr)
    engine = RecurrentEngine(model, dtype=a.dtype)
    quants = [q.strip() for q in a.quants.split(",") if q.strip()]
    for b in batches:
        prompts = [b"The quick brown fox jumps"] * b
        if not a.no_old:
            enc = jnp.asarray(np.stack([generate.encode_prompt(x) for x in prompts]))
            sec, comp = timed(lambda i: generate.sample(engine.model, enc, a.steps, jax.random.PRNGKey(i)), a.reps)
            row("RetNPhi old path (nn.generate.sample)", b, b * a.steps / sec, comp, engine.weight_bytes())
        for q in quants:
            t0 = time.perf_counter()  # start-up: a quantized engine's construction, prefill and warm-up call
            eng = engine if q == "none" else RecurrentEngine(model, dtype=a.dtype, quant=q, batch=b)
            slots = eng.prefill(prompts, Settings.make(b, 0, temperature=1.0, top_p=0.95))
            state = {"s": slots}

            def call(i, eng=eng):
                state["s"], out = eng.decode_device(state["s"], a.steps)
                return out

            sec, comp = timed(call, a.reps)
            start = time.perf_counter() - t0 - sec * a.reps  # all but the timed calls
            wb = eng.weight_bytes()
            plain = row(f"RetNPhi engine {a.dtype}" + ("" if q == "none" else f" {q}"), b, b * a.steps / sec, comp, wb,
                        start_s=start)
            for r in [r for r in a.min_rows if b < r]:  # the decode batch padded to r rows (copies of row 0)
                eng.min_rows, state["s"] = r, slots
                sec, comp = timed(call, a.reps)
                eng.min_rows = 1
                row(plain["path"] + f" min_rows {r}", b, b * a.steps / sec, comp, wb)
            if fit is not None:
                specs.append(speculative_row(eng, held, a, plain, b))
                row(*specs[-1]["row"], wb)
            del eng
    add_token_ratios(rows)
    for r in rows:
        r.update(device=device, steps=a.steps, copy_gb_s=bw / 1e9, bytes_per_token=bpt)
    print(f"\nbench.generate_retnphi on {device}, size {a.size} ({engine.weight_bytes() / 1e9:.2f} GB of weights); "
          f"copy bandwidth {bw / 1e9:.0f} GB/s; {a.steps} steps x {a.reps} calls; bytes/token {bpt:.2f} ({how}); "
          f"{time.strftime('%Y-%m-%d')}")
    print_table(rows)
    if fit is not None:
        print_spec(fit, specs, a, next((r["bytes_per_s"] for r in rows if r["path"].startswith("token decoder")
                                        and r["batch"] == 1), np.nan))
    return rows


def speculative_row(engine, held: np.ndarray, a, plain: dict, batch: int = 1) -> dict:
    """The timed speculative row (path, batch, bytes/s, compiles) with the plain row's sampling settings, `batch`
    held-out prompts a call; at batch 1 also the acceptance on held-out prompts one at a time (t=0; t=1, top-p 0.95);
    the verify pass's cost against the plain row's step (over every pass the device ran: until every row is done,
    in trips of PASSES_PER_SYNC)."""
    prompts = [bytes(w.astype(np.uint8).tolist()) for w in held_out_windows(held, 63, max(a.spec_prompts, batch))]
    accept = [float(np.mean([speculative_generate(engine, [q], a.steps, temperature=t, top_p=0.95, seed=i)[1][
        "bytes_per_verify"] for i, q in enumerate(prompts)])) for t in (0.0, 1.0)] if batch == 1 else None
    verifies = []

    def call(i):
        qs = [prompts[(i * batch + j) % len(prompts)] for j in range(batch)]
        ids, st = speculative_generate(engine, qs, a.steps, temperature=1.0, top_p=0.95, seed=i * batch)
        verifies.append(st["passes_run"])  # every pass run (past the last live row's: PASSES_PER_SYNC)
        return ids

    sec, comp = timed(call, a.reps)
    verify_s = sec / np.mean(verifies[1:])  # the timed calls only
    plain_step = batch / plain["bytes_per_s"]
    return {"row": (f"{plain['path']} speculative {a.spec_heads} heads*", batch, batch * a.steps / sec, comp),
            "accept": accept, "batch": batch, "verify_ms": 1e3 * verify_s, "step_ms": 1e3 * plain_step,
            "break_even": verify_s / plain_step}


def print_spec(f: dict, specs: list, a, token_bps: float) -> None:
    fmt = lambda xs: "[" + ", ".join(f"{x:.2f}" for x in xs) + "]"  # noqa: E731
    print(f"\nextra heads ({a.spec_heads}, trained alone on {a.head_mb:g} MB of --data-paths): {f['steps']} steps x "
          f"{f['batch']} x {f['seq_len']} bytes, lr {f['lr']:g}, {f['seconds']:.1f} s with the compile; train head bpb "
          f"{f['train_head_bpb_first']:.2f} -> {f['train_head_bpb_last']:.2f}; held-out head bpb "
          f"{fmt(f['valid_bpb_before'])} -> {fmt(f['valid_bpb_after'])} (the random base's own head: "
          f"{f['valid_main_bpb']:.2f} bpb)")
    for s in specs:
        acc = (f"accepted bytes per verify {s['accept'][0]:.2f} (t=0), {s['accept'][1]:.2f} (t=1, top-p 0.95) over "
               f"{a.spec_prompts} held-out prompts x {a.steps} bytes" if s["accept"] else "(acceptance: batch 1's)")
        print(f"{s['row'][0]} batch {s['batch']}: {acc}; a verify pass "
              f"({a.spec_heads + 1} bytes) {s['verify_ms']:.3f} ms, a plain step {s['step_ms']:.3f} ms: speculative "
              f"beats plain above {s['break_even']:.2f} bytes/verify" + ("" if s["batch"] != 1 else
              f"; at {a.project_accept:g} bytes/verify (projected) {1e3 * a.project_accept / s['verify_ms']:,.0f} "
              f"bytes/s = {1e3 * a.project_accept / s['verify_ms'] / token_bps:.2f}x the token decoder at batch 1"))
    print("* random base (random TinyLlama-shaped weights): its predictions are noise that heads trained on real bytes "
          "cannot match, so this acceptance and the speculative bytes/s are NOT representative of a trained RetNPhi; "
          "the verify cost and break-even are.")


if __name__ == "__main__":
    cli.run_main(main)
