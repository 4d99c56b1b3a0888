"""The token-decoder baseline the generation benches put beside a byte model (bench.generate, bench.generate_retnphi):
a token decoder's KV-cache generation in bytes/s at a bytes-per-token measured with a BPE tokenizer, timed the
house way, and the same-size token decoder of a byte LM config.

Same size (``decoder_config_like``): a Llama-family decoder (``hqf_jax.nn.hf_decoder``) with the byte LM's d_model,
layer count, MLP width (SwiGLU, as the byte LM's) and head count, multi-head attention (kv heads = heads), untied
embedding and head over a BPE vocabulary. Its attention width (heads x head_dim) is (2 qk_dim + 3 v_dim) / 4, so
q, k, v and o hold as many weights as the retention's q, k, v, g and o (the usual v_dim = 2 d_model gives
head_dim = 2 d_model / heads): the two models' bodies have the same weight count, and they differ by the
embedding and head (vocab x d_model each) and the retention's group-norm scales (v_dim a layer); tested.

Timing (``timed``): one warm-up call, then ``reps`` calls dispatched back to back, block_until_ready at the end;
``COMPILES`` counts the backend compiles inside the timed calls (0 in a sound timing: a recompile inside the
timed calls is timed with them). KV-cache generation (``kv_cache_tokens_per_s``): a cache prefilled once with
``prefill`` tokens (untimed, as the engine rows' prefill), then each timed call is one jitted lax.scan of
``steps`` sampled decode steps from that cache (attending over its prefill + steps positions, masked).
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.nn.hf_decoder import DecoderConfig, HFDecoderLM
from hqf_jax.nn.hf_loading import param_bytes
from hqf_jax.nn.lora import count_params

COMPILES = [0]
LLAMA = dict(model_type="llama", rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=4096,
             tie_word_embeddings=False)


def _on_event(name, *_a, **_k):
    if "backend_compile" in name:
        COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


def timed(fn, reps: int) -> tuple[float, int]:
    """(seconds per call, compiles during the timed calls) after one warm-up call; ``fn(i)`` returns arrays."""
    jax.block_until_ready(fn(0))
    before = COMPILES[0]
    t = time.perf_counter()
    outs = [fn(i + 1) for i in range(reps)]
    jax.block_until_ready(outs)
    return (time.perf_counter() - t) / reps, COMPILES[0] - before


def read_bytes(paths: str | None, mb: float) -> np.ndarray:
    """The first ``mb`` MB of the .py files under ``paths`` (sorted by path), as uint8; empty without files."""
    out, size = [], 0
    for f in sorted(glob.glob(os.path.join(paths, "**", "*.py"), recursive=True)) if paths else []:
        out.append(Path(f).read_bytes())
        if (size := size + len(out[-1])) >= mb * 2**20:
            break
    return np.frombuffer(b"".join(out), np.uint8)[: int(mb * 2**20)]


def measure_bytes_per_token(paths: str | None, vocab: int, mb: float, assumed: float) -> tuple[float, str]:
    """(bytes per token, how): a byte-level BPE with ``vocab`` entries trained on the first ``mb`` MB of the .py
    files under ``paths`` and measured on the next MB (a smaller folder: its last 10% held out); ``assumed`` (and
    said so) without files."""
    data = read_bytes(paths, mb + 1)
    if not data.size:
        return assumed, "assumed"
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    cut = min(int(mb * 2**20), int(len(data) * 0.9))
    train, held = (bytes(data[:cut]).decode("utf-8", "replace"), bytes(data[cut:]).decode("utf-8", "replace"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([train[i:i + 65536] for i in range(0, len(train), 65536)],
                            trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    n = len(tok.encode(held).ids)
    return (len(held.encode("utf-8")) / max(n, 1),
            f"measured: BPE({vocab}) on {cut / 2**20:.3g} MB, {(len(data) - cut) / 2**20:.3g} MB held out")


def kv_cache_tokens_per_s(decoder: HFDecoderLM, batch: int, steps: int, reps: int, prefill: int = 64) -> tuple:
    """(tokens/s, compiles in the timed calls) of sampled KV-cache generation: a cache of ``prefill + steps``
    positions prefilled once with ``prefill`` tokens (untimed), then each timed call ``steps`` decode steps from it."""
    sec, comp = timed(kv_cache_call(decoder, batch, steps, prefill), reps)
    return batch * steps / sec, comp


def kv_cache_call(decoder: HFDecoderLM, batch: int, steps: int, prefill: int = 64):
    """``call(i)``: one jitted lax.scan of ``steps`` sampled KV-cache decode steps (key ``PRNGKey(i)``) from a cache
    of ``prefill + steps`` positions prefilled once (here) with ``prefill`` tokens; returns the last tokens."""
    gd, st = nnx.split(decoder)

    @jax.jit
    def start(st):
        m = nnx.merge(gd, st)
        logits, cache = m.decode(jnp.ones((batch, prefill), jnp.int32), m.init_cache(batch, prefill + steps))
        return jnp.argmax(logits[:, -1], -1).astype(jnp.int32), cache

    @jax.jit
    def run(st, first, cache, key):
        m = nnx.merge(gd, st)

        def body(carry, i):
            tok, cache = carry
            lg, cache = m.decode(tok[:, None], cache)
            nxt = jax.random.categorical(jax.random.fold_in(key, i), lg[:, -1].astype(jnp.float32))
            return (nxt.astype(jnp.int32), cache), None

        (tok, _), _ = jax.lax.scan(body, (first, cache), jnp.arange(steps))
        return tok

    first, cache = start(st)
    return lambda i: run(st, first, cache, jax.random.PRNGKey(i))


def decoder_config_like(cfg, vocab: int = 32000) -> dict:
    """The HF config (Llama family) of the token decoder the size of byte LM config ``cfg`` (a RetNetConfig):
    same d_model, layers, MLP width and heads; head_dim from the retention's weight count (module docstring)."""
    width = (2 * cfg.qk_dim + 3 * cfg.v_dim) / 4
    head_dim = max(2, 2 * round(width / cfg.num_heads / 2))  # even: rotary pairs
    return dict(LLAMA, vocab_size=vocab, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                num_key_value_heads=cfg.num_heads, head_dim=head_dim)


def read_limit(batch: int, bandwidth: float, weight_bytes: int, bytes_per_step: float = 1.0) -> float:
    """Bytes/s of ``batch`` rows at one read of ``weight_bytes`` per decode step at ``bandwidth`` bytes/s, each
    row emitting ``bytes_per_step`` bytes a step (1 for a byte model; a token decoder's bytes per token)."""
    if batch < 1 or bandwidth <= 0 or weight_bytes <= 0 or bytes_per_step <= 0:
        raise ValueError(f"read_limit needs positive figures: batch {batch}, bandwidth {bandwidth}, weight bytes "
                         f"{weight_bytes}, bytes per step {bytes_per_step}")
    return batch * bandwidth / weight_bytes * bytes_per_step


def step_weight_bytes(decoder) -> int:
    """Bytes of weights one decode step reads: every parameter but the input embedding table, of which a step
    gathers one row a sequence (a table tied to the head is read whole, so it counts)."""
    total = param_bytes(decoder)
    return total if decoder.lm_head is None else total - param_bytes(decoder.model.embed_tokens)


def same_size_rows(byte_model, batches, steps: int, reps: int, bandwidth: float, bytes_per_token: float,
                   vocab: int, prefill: int = 64) -> list[dict]:
    """Rows (bench.generate's form) of the same-size token decoder's KV-cache generation in bytes/s (tokens/s x
    ``bytes_per_token``), random bf16 weights, at each batch; the weight-read limit is the batch's tokens/s at
    one read of the step's weights (step_weight_bytes) per step (``bandwidth`` bytes/s) in bytes/s. Prints both
    models' parameter counts."""
    hf = decoder_config_like(byte_model.cfg, vocab)
    decoder = HFDecoderLM(DecoderConfig.from_hf(hf, dtype="bfloat16"), rngs=nnx.Rngs(0))
    c, n_tok, n_byte = byte_model.cfg, count_params(decoder, nnx.Param), count_params(byte_model, nnx.Param)
    emb_tok, emb_byte = 2 * vocab * c.d_model, (2 + c.extra_heads) * c.vocab_size * c.d_model
    mp = lambda n: f"{n / 1e6:,.2f}M"  # noqa: E731
    print(f"  same-size token decoder: d_model {c.d_model}, {c.num_layers} layers, MLP {c.ffn_dim}, {c.num_heads} "
          f"heads x {hf['head_dim']} (kv {c.num_heads}), vocab {vocab}: {mp(n_tok)} params ({mp(n_tok - emb_tok)} "
          f"without embedding and head); byte LM {mp(n_byte)} ({mp(n_byte - emb_byte)})", flush=True)
    wb, rows = step_weight_bytes(decoder), []
    for b in batches:
        tps, comp = kv_cache_tokens_per_s(decoder, b, steps, reps, prefill)
        rows.append(dict(path="token decoder KV-cache bf16", batch=b, weight_bytes=wb,
                         bytes_per_s=tps * bytes_per_token,
                         limit_bytes_per_s=read_limit(b, bandwidth, wb, bytes_per_token),
                         compiles=comp, bytes_per_token=bytes_per_token, params=n_tok, byte_lm_params=n_byte))
    return rows


def add_token_ratios(rows: list[dict]) -> None:
    """Each row's ``x_token``: its bytes/s over the token decoder's at the same config and batch (where measured;
    the first token decoder row of that config and batch: a padded one after it is a variant)."""
    token = {}
    for r in rows:
        if r["path"].startswith("token decoder"):
            token.setdefault((r["config"], r["batch"]), r["bytes_per_s"])
    for r in rows:
        if (r["config"], r["batch"]) in token:
            r["x_token"] = r["bytes_per_s"] / token[(r["config"], r["batch"])]
