"""Bits per byte of a trained run on held-out bytes, beside gzip -9 and xz -9 of the same bytes.

    python -m eval.bpb --run runs/lm [--data PATH] [--max-bytes N] [--step S]

Without --data the run's own validation split is scored. The model scores --max-bytes of it as
non-overlapping windows of the run's seq_len spread evenly over the split (each window starts from
BOS, no carried context); the compressors see the same windows concatenated as one stream.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from hqf_jax.scoring.compressors import BASELINES
from hqf_jax import cli
from hqf_jax.data.batching import eval_windows
from hqf_jax.data.sources import load_corpus, load_files
from hqf_jax.trainer import lm_task


def measure(run: str, data: str | None = None, max_bytes: int = 1 << 18, step: int | None = None, batch_size: int = 16,
            quant: str | None = None, quant_impl: str = "reference"):
    model, cfg, step = lm_task.load_run(run, step)
    if quant:
        from hqf_jax.quant.model import quantize_model

        model, _ = quantize_model(model, quant, impl=quant_impl)
    corpus = load_files([data], valid_fraction=1.0) if data else load_corpus(cfg.data)
    stream = corpus.stream("valid")
    seq_len = min(cfg.data.seq_len, len(stream))
    evaluate = lm_task.make_eval_fn(stream, seq_len, batch_size, max_bytes)
    scored = eval_windows(stream, seq_len, max_bytes).tobytes()  # the very bytes the model scores
    result = {"run": run, "step": step, "bytes": len(scored), "model_bpb": evaluate(model)["valid_bpb"]}
    for name, fn in BASELINES.items():
        result[name] = fn(scored)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run folder written by python -m train.<track>")
    p.add_argument("--data", default=None, help="file or folder of held-out bytes (default: the run's validation split)")
    p.add_argument("--max-bytes", type=int, default=1 << 18, help="bytes to score (0: the whole split)")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    p.add_argument("--quant", default=None, help="score with the dense layers quantized by this method (e.g. nf4, int4, phi5+u8)")
    p.add_argument("--quant-impl", default="reference", choices=["reference", "pallas"])
    a = p.parse_args(argv)
    if a.max_bytes < 0:
        raise cli.ConfigError(f"--max-bytes {a.max_bytes}: give how many held-out bytes to score (0: the whole split)")
    r = measure(a.run, a.data, a.max_bytes, a.step, quant=a.quant, quant_impl=a.quant_impl)
    if a.json:
        print(json.dumps(r))
        return
    print(f"held-out bytes: {r['bytes']:,} (run {r['run']}, step {r['step']}" + (f", dense layers {a.quant})" if a.quant else ")"))
    print(f"{'method':<12} {'bits/byte':>10}")
    for name in ["model_bpb", *BASELINES]:
        label = "model" if name == "model_bpb" else name
        print(f"{label:<12} {r[name]:>10.4f}")


if __name__ == "__main__":
    cli.run_main(main)
