"""Inference: the byte LM's engine (weights prepared once, chunkwise prefill, on-device decode loop) and the
batcher the HTTP server runs on. See docs/generation.md."""

from hqf_jax.infer.engine import Engine, EngineError, Settings, Slots, encode, forward, ids_to_bytes, prepare_model
