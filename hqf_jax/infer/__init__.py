"""Inference for the byte LM: the engine (weights prepared once, chunkwise prefill, on-device decode loop, per-row
sampling), self-speculative decoding with the extra heads, the continuous batcher and the stdlib HTTP server
that `python -m serve` runs, and what the decode benchmarks share (bench_setup: the model, a warm engine, ops
per step; trace_stats: device time from a profiler trace). Imports ops, nn, quant, trainer (to load a run) and
pallas_kernels (the decode kernel, on request); imported by entry points (eval, serve, bench) only. See
docs/generation.md."""

from hqf_jax.infer.engine import Engine, EngineError, Settings, Slots, encode, ids_to_bytes, prepare_model
from hqf_jax.infer.step import forward
