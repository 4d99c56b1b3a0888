"""Start-up of a quantized engine in the Hopper form, on any machine: the engine built (quantization, kernel layouts),
then its prefill and its decode loop traced and lowered for CUDA (what a GPU does in Python before XLA compiles),
each timed, with the Mosaic GPU custom calls and the size of the lowered text. No GPU is needed and none is used.

    python -m bench.lower_startup [--config configs/lm_125m.py] [--quant int4] [--batch 8] [--decode-impl jnp]
    python -m bench.lower_startup --per-site    # the kernel lowered at every call site, as qlinear did before

--per-site replaces the Hopper form's jitted entry (mosaic_matmul_jit) by the bare call, so each quantized layer
lowers the whole kernel again: the A/B of the change that made layers of one shape share one traced kernel.
"""

from __future__ import annotations

import argparse
import time

import jax

from hqf_jax import cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/lm_125m.py")
    p.add_argument("--quant", default="int4", help="a method the Hopper form takes: int4, int8, nf4, phi4")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--decode-impl", default="jnp", help="jnp, fused, fused_pallas (Engine decode_impl)")
    p.add_argument("--steps", type=int, default=128, help="decode steps of the lowered loop")
    p.add_argument("--per-site", action="store_true", help="the kernel lowered at every call site (before)")
    a = p.parse_args(argv)

    import pallas_kernels.quant.mosaic as M
    from hqf_jax.infer.bench_setup import build_model
    from hqf_jax.infer.engine import Engine, Settings, _decode, _prefill

    model, _, _ = build_model(a.config)
    t = time.perf_counter()
    engine = Engine(model, dtype="bfloat16", quant=a.quant, quant_impl="mosaic", decode_impl=a.decode_impl,
                    batch=a.batch)
    rows = {"construct": (time.perf_counter() - t, None, None)}
    kept_backend, kept_entry = jax.default_backend, M.mosaic_matmul_jit
    try:
        jax.default_backend = lambda: "gpu"  # qlinear and the engine take their GPU paths; lowering is for CUDA
        engine.interpret = False  # set at construction from the CPU backend: the Pallas steps lower as Triton
        if a.per_site:
            M.mosaic_matmul_jit = lambda x, mw, blocks=None: M.mosaic_matmul(x, mw, blocks)
        jax.clear_caches()  # an earlier call in this process (the other form) must not hand back its traces
        tokens, lengths = engine._pad([b"The quic"] * a.batch)
        settings = Settings.make(a.batch, 0, temperature=1.0, top_p=0.95)

        def lowered(name, fn, *args):
            t = time.perf_counter()
            low = fn.trace(*args).lower(lowering_platforms=("cuda",))
            text = low.as_text()
            rows[name] = (time.perf_counter() - t, text.count("stablehlo.custom_call @mosaic_gpu"), len(text))
            return low

        slots = lowered("prefill", _prefill, engine._model, engine._leaves, tokens, lengths, settings,
                        engine.vocab_limit).out_info
        lowered("decode loop", _decode, engine._model, engine._leaves, engine.fused_weights, slots, a.steps,
                engine.vocab_limit, *engine.static_args(a.batch))
    finally:
        jax.default_backend, M.mosaic_matmul_jit = kept_backend, kept_entry
        jax.clear_caches()  # nor hand this form's to a later one
    print(f"\nbench.lower_startup on {jax.devices()[0].platform}: {a.config} {a.quant} (Hopper form) batch {a.batch}, "
          f"{a.decode_impl}, {'kernel per call site' if a.per_site else 'jitted entry'}; {time.strftime('%Y-%m-%d')}")
    print(f"{'stage':12s} {'seconds':>8s} {'mosaic_gpu calls':>16s} {'lowered MB':>10s}")
    for name, (sec, calls, size) in rows.items():
        print(f"{name:12s} {sec:8.1f} {'-' if calls is None else calls:>16} "
              f"{'-' if size is None else f'{size / 1e6:.1f}':>10s}")
    return rows


if __name__ == "__main__":
    cli.run_main(main)
