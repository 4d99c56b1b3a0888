"""Start-up of a quantized engine in the Hopper form, on any machine: the engine built (quantization, kernel layouts),
then its prefill and its decode loop traced and lowered for CUDA (what a GPU host does in Python before XLA
compiles; the Pallas steps as Triton), each timed, with the backend compiles of the construction, the Mosaic GPU
custom calls and the size of the lowered text. No GPU is needed and none is used.

    python -m bench.lower_startup [--config configs/lm_125m.py] [--quant int4] [--batch 8] [--decode-impl jnp]
    python -m bench.lower_startup --per-site --eager-layout    # both as they were before stop 34

--per-site replaces the Hopper form's jitted entry (mosaic_matmul_jit) by the bare call, so each quantized layer
lowers the whole kernel again; --eager-layout lays the weights out op by op (prepare_mosaic, not prepare_mosaic_jit),
so each op compiles again for each new weight shape: the A/B of the two changes.
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
    p.add_argument("--eager-layout", action="store_true", help="the layout run op by op (before)")
    a = p.parse_args(argv)

    import pallas_kernels.quant.mosaic as M
    import pallas_kernels.quant.mosaic_layout as L
    from hqf_jax.infer.bench_setup import build_model
    from hqf_jax.infer.engine import Engine, Settings, _decode, _prefill
    from hqf_jax.infer.token_baseline import COMPILES

    model, _, _ = build_model(a.config)
    kept = jax.default_backend, M.mosaic_matmul_jit, L.prepare_mosaic_jit
    rows = {}
    try:
        jax.clear_caches()  # an earlier call in this process (the other form) must not hand back its traces
        if a.eager_layout:
            L.prepare_mosaic_jit = L.prepare_mosaic
        if a.per_site:
            M.mosaic_matmul_jit = lambda x, mw, blocks=None: M.mosaic_matmul(x, mw, blocks)
        t, before = time.perf_counter(), COMPILES[0]
        engine = Engine(model, dtype="bfloat16", quant=a.quant, quant_impl="mosaic", decode_impl=a.decode_impl,
                        batch=a.batch)
        rows["construct"] = (time.perf_counter() - t, f"{COMPILES[0] - before} compiles", None)
        jax.default_backend = lambda: "gpu"  # qlinear and the engine take their GPU paths; lowering is for CUDA
        engine.interpret = False  # set at construction from the CPU backend: the Pallas steps lower as Triton
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
        jax.default_backend, M.mosaic_matmul_jit, L.prepare_mosaic_jit = kept
        jax.clear_caches()  # nor hand this form's to a later one
    forms = ["kernel per call site" if a.per_site else "jitted entry", "eager layout" if a.eager_layout else
             "jitted layout"]
    print(f"\nbench.lower_startup on {jax.devices()[0].platform}: {a.config} {a.quant} (Hopper form) batch {a.batch}, "
          f"{a.decode_impl}, {', '.join(forms)}; {time.strftime('%Y-%m-%d')}")
    print(f"{'stage':12s} {'seconds':>8s} {'mosaic_gpu calls':>16s} {'lowered MB':>10s}")
    for name, (sec, calls, size) in rows.items():
        print(f"{name:12s} {sec:8.1f} {calls:>16} {'-' if size is None else f'{size / 1e6:.1f}':>10s}")
    return rows


if __name__ == "__main__":
    cli.run_main(main)
