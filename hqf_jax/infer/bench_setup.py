"""What the decode benchmarks share (bench.generate, bench.generate_retnphi, bench.decode_profile): the model they
time (a config's random weights, or a run's trained ones; RetNPhi converted from a random decoder of a named size),
an engine's slots after one warm-up decode call, the warm calls bench.decode_profile chains (a decode call, a
KV-cache call, a speculative call), the op count of one decode step from the compiled loop's HLO, and the summary
table (the weight-read limit itself: token_baseline.read_limit)."""

from __future__ import annotations

import itertools

import jax
from flax import nnx

from hqf_jax import cli
from hqf_jax.infer.engine import Engine, Settings, _decode
from hqf_jax.infer.hlo_count import loop_body_ops
from hqf_jax.infer.recurrent import RecurrentEngine
from hqf_jax.infer.speculative import speculative_generate
from hqf_jax.infer.token_baseline import LLAMA, kv_cache_call
from hqf_jax.nn.hf_decoder import DecoderConfig, HFDecoderLM
from hqf_jax.nn.retnphi import RetNPhi, RetNPhiConfig

RETNPHI_SIZES = {  # the decoder RetNPhi is converted from (bench.generate_retnphi --size, decode_profile --retnphi)
    "tiny": dict(LLAMA, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "1b": dict(LLAMA, vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),  # TinyLlama-1.1B shape
}


def build_model(config: str, overrides=(), run: str | None = None, heads: int | None = None):
    """(model, cfg, source): a train.lm run's weights when ``run`` is given, else ``config`` (with
    ``key=value`` overrides, and ``model.extra_heads=heads`` when heads is given) with random weights (speed
    does not depend on their values)."""
    from hqf_jax.trainer import lm_task

    if run:
        model, cfg, _ = lm_task.load_run(run)
        return model, cfg, run
    cfg = cli.load_config_file(config)
    cfg = cli.apply_overrides(cfg, list(overrides) + ([f"model.extra_heads={heads}"] if heads is not None else []))
    return lm_task.build_model(cfg), cfg, config


def retnphi_decoder(size: str, dtype: str) -> HFDecoderLM:
    """The random-weight decoder of RETNPHI_SIZES[size] (parameters and compute in ``dtype``): RetNPhi's source
    and the token decoder the benches put beside it."""
    return HFDecoderLM(DecoderConfig.from_hf(RETNPHI_SIZES[size], dtype=dtype), rngs=nnx.Rngs(0))


def build_retnphi(decoder: HFDecoderLM, extra_heads: int = 0) -> RetNPhi:
    """RetNPhi converted from ``decoder`` (its layers are moved: the decoder is spent) with random byte rows
    (speed does not depend on the values), chunk size 64, ``extra_heads`` extra byte heads."""
    return RetNPhi.from_decoder(decoder, RetNPhiConfig(byte_init="random", chunk_size=64, extra_heads=extra_heads))


def warm_slots(engine: Engine, batch: int, steps: int, prompt: bytes = b"The quic"):
    """Slots of ``batch`` rows (sampling at temperature 1, top-p 0.95) after prefill and one decode call of
    ``steps`` steps, finished: the decode loop is compiled and the next calls time only the decode."""
    slots = engine.prefill([prompt] * batch, Settings.make(batch, 0, temperature=1.0, top_p=0.95))
    slots, out = engine.decode_device(slots, steps)
    jax.block_until_ready(out)
    return slots


def ops_per_step(engine: Engine) -> int:
    """Non-trivial top-level ops of one decode step (the compiled loop body on this device) at batch 1."""
    slots = engine.prefill([b"ab"], Settings.make(1, 0, temperature=1.0, top_p=0.95))
    _, interpret, _, dot_rows, min_rows = engine.static_args(1)
    low = _decode.lower(engine.graphdef, engine.weights, engine.fused_weights, slots, 8, engine.vocab_limit,
                        engine.decode_impl, interpret, 1, dot_rows, min_rows)
    return int(sum(loop_body_ops(low.compile().as_text()).values()))


def print_table(rows: list[dict]) -> None:
    """bench.generate's summary: a line per row with its weight-read limit (batch x copy bandwidth / weight bytes,
    in bytes/s) and % of it, ops per step, bpb and its cost, compiles in the timed calls, and "x token": its bytes/s
    over the same-size token decoder's at the same config and batch; "start s" where a row has one (bench.generate's
    engine rows: construction and warm-up)."""
    print(f"{'config':22s} {'path':40s} {'batch':>5s} {'bytes/s':>11s} {'weight MB':>9s} {'limit B/s':>11s} "
          f"{'% limit':>7s} {'x token':>7s} {'ops/step':>8s} {'bpb (+cost)':>15s} {'compiles':>8s} {'start s':>7s}")
    for r in rows:
        lim = r.get("limit_bytes_per_s")
        wb = f"{r['weight_bytes'] / 1e6:9.1f}" if r.get("weight_bytes") else "        -"
        lim_s = f"{lim:11,.0f}" if lim else "          -"
        pct = f"{100 * r['bytes_per_s'] / lim:6.1f}%" if lim else "      -"
        xtok = f"{r['x_token']:6.2f}x" if "x_token" in r else "      -"
        ops = f"{r['ops_per_step']:8d}" if r.get("ops_per_step") else "       -"
        bpb = (f"{r['bpb']:.4f} ({r['bpb_cost']:+.4f})" if r.get("bpb") is not None and r.get("bpb_cost") is not None
               else "-")
        spec = f"  {r['bytes_per_verify']:.2f} bytes/verify" if "bytes_per_verify" in r else ""
        cfg_name = str(r["config"]).split("/")[-1]
        start = f"{r['start_s']:7.1f}" if r.get("start_s") is not None else "      -"
        print(f"{cfg_name:22s} {r['path']:40s} {r['batch']:5d} {r['bytes_per_s']:11,.0f} {wb} {lim_s} {pct} {xtok} "
              f"{ops} {bpb:>15s} {r.get('compiles', 0):8d} {start}{spec}")


def engine_call(engine: Engine | RecurrentEngine, batch: int, steps: int):
    """``call()``: one decode call of ``steps`` steps, each from the slots the last one left (compiled here)."""
    state = {"slots": warm_slots(engine, batch, steps)}

    def call():
        state["slots"], out = engine.decode_device(state["slots"], steps)
        return out
    return call


def token_call(decoder, batch: int, steps: int):
    """``call()``: one KV-cache call of ``steps`` sampled steps from the prefilled cache (compiled here)."""
    run, keys = kv_cache_call(decoder, batch, steps), itertools.count()
    jax.block_until_ready(run(next(keys)))
    return lambda: run(next(keys))


def speculative_call(engine: Engine, batch: int, steps: int):
    """(``call()``, verify passes a call): speculative decoding of ``steps`` bytes a row (compiled here)."""
    prompts = [b"The quic"] * batch
    run = lambda: speculative_generate(engine, prompts, steps, seed=0, temperature=1.0)  # noqa: E731
    _, stats = run()
    return (lambda: run()[0]), stats["passes_run"]  # every pass run, past the last live row's (PASSES_PER_SYNC)
