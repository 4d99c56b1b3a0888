"""Bench RetNPhi: training bytes/s and memory, generation bytes/s beside the original decoder's KV-cache decode.

For each size: a decoder with random weights (or a real checkpoint folder) in bf16, converted to RetNPhi with
LoRA (frozen base, per-block remat). Every variant is checked first (chunkwise vs parallel retention, Pallas vs
chunkwise on GPU, KV-cache decode vs full forward), then timed in one process; the table comes last.

    python -m bench.retnphi --small                     # CPU smoke run, tiny sizes
    python -m bench.retnphi --sizes 125m,1b,phi35        # GPU: token-model scale, ~1B, Phi-3.5-mini shape
    python -m bench.retnphi --checkpoint runs/token_lm/hf --tokenizer runs/token_lm/hf

Training: B x T bytes per step, >= 20 timed steps after warmup, block_until_ready at the end; memory from
XLA's compiled memory analysis of the step (arguments + outputs + temporaries - aliased). Generation: prefill P
(untimed), then N steps inside one jitted lax.scan, timed: rate = B N / t(N steps). The decoder's
tokens/s becomes bytes/s through bytes-per-token measured with --tokenizer on a stdlib source file
(else the --bytes-per-token assumption, printed as such).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hqf_jax.nn.hf_decoder import DecoderConfig, HFDecoderLM
from hqf_jax.nn.lora import LoRAConfig, apply_lora, count_params
from hqf_jax.nn.retnphi import RetNPhi, RetNPhiConfig
from hqf_jax.ops.constants import BYTE_VOCAB_SIZE

FIXTURE = os.path.join(os.path.dirname(__file__), os.pardir, "tests", "fixtures", "phi35_config.json")
_LLAMA = dict(model_type="llama", rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=4096,
              tie_word_embeddings=False)
SIZES = {
    "tiny": dict(_LLAMA, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "125m": dict(_LLAMA, vocab_size=16384, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=4),
    "1b": dict(_LLAMA, vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),  # TinyLlama-1.1B shape
    "phi35": "fixture",
}


def _config(size: str, dtype: str) -> DecoderConfig:
    if size == "phi35":
        return DecoderConfig.from_json(FIXTURE, dtype=dtype)
    return DecoderConfig.from_hf(SIZES[size], dtype=dtype)


def _timeit(fn, reps: int) -> float:
    jax.block_until_ready(fn())  # warmup / compile
    t0 = time.perf_counter()
    out = None
    for _ in range(reps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / reps


def bytes_per_token(tokenizer_dir: str | None, assumed: float) -> tuple[float, str]:
    if not tokenizer_dir:
        return assumed, "assumed"
    from transformers import AutoTokenizer

    text = open(inspect.getsourcefile(argparse), encoding="utf-8").read()
    ids = AutoTokenizer.from_pretrained(tokenizer_dir)(text)["input_ids"]
    return len(text.encode("utf-8")) / len(ids), "measured on argparse.py"


def bench_size(name, decoder: HFDecoderLM, args, gpu: bool, rows: list):
    cfg = decoder.cfg
    reps = args.reps
    key = jax.random.key(0)
    # ---- original decoder: check the cache path, then KV-cache generation
    gd, st = nnx.split(decoder)
    prompt = jax.random.randint(key, (args.gen_batch, args.prefill), 0, cfg.vocab_size, jnp.int32)

    @jax.jit
    def dec_check(st, ids):
        m = nnx.merge(gd, st)
        full = m(ids)
        cache = m.init_cache(ids.shape[0], ids.shape[1])
        a, cache = m.decode(ids[:, :-4], cache)
        b, _ = m.decode(ids[:, -4:], cache)
        return jnp.abs(jnp.concatenate([a, b], 1) - full).max() / jnp.abs(full).max()

    dec_err = float(dec_check(st, prompt[:1, : min(64, args.prefill)]))

    @jax.jit
    def dec_prefill(st, prompt):
        m = nnx.merge(gd, st)
        cache = m.init_cache(prompt.shape[0], prompt.shape[1] + args.gen_steps)
        logits, cache = m.decode(prompt, cache)
        return jnp.argmax(logits[:, -1], -1).astype(jnp.int32), cache

    @jax.jit
    def dec_steps(st, first, cache):
        m = nnx.merge(gd, st)

        def body(carry, _):
            tok, cache = carry
            lg, cache = m.decode(tok[:, None], cache)
            return (jnp.argmax(lg[:, -1], -1).astype(jnp.int32), cache), None

        (tok, _), _ = jax.lax.scan(body, (first, cache), None, length=args.gen_steps)
        return tok

    first, cache = dec_prefill(st, prompt)
    dec_tps = args.gen_batch * args.gen_steps / _timeit(lambda: dec_steps(st, first, cache), reps)
    bpt, how = bytes_per_token(args.tokenizer, args.bytes_per_token)
    rows.append((name, "decoder KV-cache decode", f"B={args.gen_batch}", f"{dec_tps:,.0f} tok/s = {dec_tps * bpt:,.0f} B/s "
                 f"({bpt:.2f} B/tok {how})", "", f"{dec_err:.1e}"))
    del gd, st

    # ---- convert, adapters
    rcfg = RetNPhiConfig(byte_init="random", chunk_size=args.chunk, remat=True)
    model = RetNPhi.from_decoder(decoder, rcfg)
    del decoder
    apply_lora(model, LoRAConfig(targets=("auto",), rank=args.rank,
                                 alpha=2.0 * args.rank), nnx.Rngs(1))
    filt = rcfg.trainable_filter()
    n_train, n_all = count_params(model, filt), count_params(model, nnx.Param)
    gd, params, rest = nnx.split(model, filt, ...)
    toks = jax.random.randint(key, (args.batch, args.seq_len + 1), 0, 256, jnp.int32)

    small = toks[:1, : min(256, args.seq_len)]
    ref = jax.jit(lambda p, r, t: nnx.merge(gd, p, r)(t, form="parallel"))(params, rest, small)
    forms = ["chunkwise"] + (["pallas"] if gpu else [])
    errs = {}
    for form in list(forms):
        try:
            out = jax.jit(lambda p, r, t, f=form: nnx.merge(gd, p, r)(t, form=f))(params, rest, small)
            errs[form] = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
        except Exception as e:  # a variant that cannot run here is reported, the others still run
            rows.append((name, f"train LoRA {form}", "", f"FAILED: {type(e).__name__}: {str(e)[:80]}", "", ""))
            forms.remove(form)

    tx = optax.adamw(1e-4)
    for form in forms:
        def loss_fn(p, rest, toks, form=form):
            m = nnx.merge(gd, p, rest)
            logits = m(toks[:, :-1], form=form)
            return optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:]).mean()

        @jax.jit
        def step(p, opt_state, rest, toks, loss_fn=loss_fn):
            loss, g = jax.value_and_grad(loss_fn)(p, rest, toks)
            upd, opt_state = tx.update(g, opt_state, p)
            return optax.apply_updates(p, upd), opt_state, loss

        opt_state = tx.init(params)
        mem = step.lower(params, opt_state, rest, toks).compile().memory_analysis()
        mem_gb = float("nan")
        if mem is not None:
            mem_gb = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                      - mem.alias_size_in_bytes) / 1e9
        state = {"p": params, "o": opt_state}

        def one():
            state["p"], state["o"], loss = step(state["p"], state["o"], rest, toks)
            return loss

        sec = _timeit(one, max(reps, 20) if gpu else reps)
        rows.append((name, f"train LoRA r{args.rank} {form} remat", f"{args.batch}x{args.seq_len}",
                     f"{args.batch * args.seq_len / sec:,.0f} B/s", f"{mem_gb:.2f} GB", f"{errs[form]:.1e}"))

    # ---- RetNPhi generation: prefill in chunkwise form, then recurrent steps
    bprompt = jax.random.randint(key, (args.gen_batch, args.prefill), 0, 256, jnp.int32)

    @jax.jit
    def gen_prefill(params, rest, prompt):
        m = nnx.merge(gd, params, rest)
        logits, state = m(prompt, m.init_state(prompt.shape[0]), form="chunkwise", return_state=True)
        return jnp.argmax(logits[:, -1], -1).astype(jnp.int32), state

    @jax.jit
    def gen_steps(params, rest, first, state):
        m = nnx.merge(gd, params, rest)

        def body(carry, _):
            tok, state = carry
            lg, state = m.step(tok, state)
            return (jnp.argmax(lg, -1).astype(jnp.int32), state), None

        (tok, _), _ = jax.lax.scan(body, (first, state), None, length=args.gen_steps)
        return tok

    first, state = gen_prefill(params, rest, bprompt)
    bps = args.gen_batch * args.gen_steps / _timeit(lambda: gen_steps(params, rest, first, state), reps)
    rows.append((name, "RetNPhi recurrent generate", f"B={args.gen_batch}", f"{bps:,.0f} B/s", "", ""))
    rows.append((name, f"params: {n_all:,} ({n_train:,} trainable)", "", "", "", ""))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="CPU smoke run: tiny size, short sequences")
    ap.add_argument("--sizes", default="125m,1b")
    ap.add_argument("--checkpoint", default=None, help="an HF folder to bench instead of random sizes")
    ap.add_argument("--tokenizer", default=None, help="folder with the decoder's tokenizer (bytes per token)")
    ap.add_argument("--bytes-per-token", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--gen-batch", type=int, default=1)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--gen-steps", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args(argv)
    if args.small:
        args.sizes, args.batch, args.seq_len, args.chunk = "tiny", 2, 64, 16
        args.prefill, args.gen_steps, args.reps, args.dtype = 16, 16, 2, "float32"
    gpu = jax.default_backend() == "gpu"
    rows: list[tuple] = []
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})")
    if args.checkpoint:
        from hqf_jax.nn.hf_loading import load_hf_decoder

        bench_size(os.path.basename(os.path.normpath(args.checkpoint)),
                   load_hf_decoder(args.checkpoint, dtype=args.dtype), args, gpu, rows)
    else:
        for size in args.sizes.split(","):
            cfg = _config(size, args.dtype)
            decoder = HFDecoderLM(cfg, rngs=nnx.Rngs(0))
            bench_size(size, decoder, args, gpu, rows)
    header = ("size", "variant", "shape", "rate", "memory", "rel.err vs ref")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print()
    for r in [header] + rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    return rows


if __name__ == "__main__":
    main()
