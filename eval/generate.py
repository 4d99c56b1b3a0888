"""Stream bytes from a trained run through the inference engine (chunkwise prefill, O(1)-state decode on
device, ``--chunk`` bytes per device call).

    python -m eval.generate --run runs/lm --prompt "def " [--max-bytes 400] [--temperature 0.8]
                            [--top-k 0] [--top-p 0.95] [--seed 0] [--dtype float32] [--quant int8]
"""

from __future__ import annotations

import argparse
import sys

from hqf_jax import cli
from hqf_jax.infer.engine import DECODE_IMPLS, DTYPES, Engine


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--prompt", default="")
    p.add_argument("--max-bytes", type=int, default=400)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--quant", default=None, help="generate with the dense layers quantized by this method (e.g. nf4)")
    p.add_argument("--quant-impl", default="auto", choices=["auto", "reference", "pallas"],
                   help="auto: the fused Pallas kernels on a GPU, XLA dequantize-then-matmul elsewhere")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="the engine's compute and weight dtype")
    p.add_argument("--decode-impl", default="jnp", choices=DECODE_IMPLS)
    p.add_argument("--chunk", type=int, default=32, help="bytes per device call")
    a = p.parse_args(argv)
    if a.temperature < 0 or not 0 < a.top_p <= 1 or a.top_k < 0:
        raise cli.ConfigError("need --temperature >= 0, 0 < --top-p <= 1 and --top-k >= 0")
    engine = Engine.from_run(a.run, a.step, dtype=a.dtype, quant=a.quant, quant_impl=a.quant_impl,
                             decode_impl=a.decode_impl, allow_eos=True)
    out = sys.stdout.buffer
    out.write(a.prompt.encode())
    for b in engine.stream(a.prompt.encode(), a.max_bytes, chunk=a.chunk, seed=a.seed, temperature=a.temperature,
                           top_k=a.top_k, top_p=a.top_p):
        out.write(bytes([b]))
        out.flush()
    out.write(b"\n")


if __name__ == "__main__":
    cli.run_main(main)
