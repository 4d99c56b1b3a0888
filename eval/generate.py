"""Stream bytes from a trained run through the recurrent form (O(1) memory per byte).

    python -m eval.generate --run runs/lm --prompt "def " [--max-bytes 400] [--temperature 0.8]
                            [--top-k 0] [--top-p 0.95] [--seed 0] [--step best|latest|N]

Generates from the run's best-validation step by default (the newest when the run recorded none);
the step used is named on stderr, so stdout holds only the bytes.
"""

from __future__ import annotations

import argparse
import sys

from hqf_jax import cli
from hqf_jax.nn.generate import stream
from hqf_jax.trainer import lm_task


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--prompt", default="")
    p.add_argument("--max-bytes", type=int, default=400)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step", default="best", help="a saved step, 'best' (default: the best-validation step) or 'latest'")
    p.add_argument("--quant", default=None, help="generate with the dense layers quantized by this method (e.g. nf4)")
    p.add_argument("--quant-impl", default="reference", choices=["reference", "pallas"])
    a = p.parse_args(argv)
    if a.temperature < 0 or not 0 < a.top_p <= 1 or a.top_k < 0:
        raise cli.ConfigError("need --temperature >= 0, 0 < --top-p <= 1 and --top-k >= 0")
    model, _, step, chosen = lm_task.load_run(a.run, a.step, with_label=True)
    print(f"[generate] run {a.run}, step {step} ({chosen})", file=sys.stderr, flush=True)
    if a.quant:
        from hqf_jax.quant.model import quantize_model

        model, _ = quantize_model(model, a.quant, impl=a.quant_impl)
    out = sys.stdout.buffer
    out.write(a.prompt.encode())
    for b in stream(model, a.prompt.encode(), a.max_bytes, a.seed, a.temperature, a.top_k, a.top_p):
        out.write(bytes([b]))
        out.flush()
    out.write(b"\n")


if __name__ == "__main__":
    cli.run_main(main)
