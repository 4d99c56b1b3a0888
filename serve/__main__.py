"""Serve a trained byte LM over HTTP: POST /v1/completions (a token is a byte; SSE with "stream": true) and
GET /health. Concurrent requests share one batched decode loop.

    python -m serve --run runs/lm [--port 8000] [--quant int8] [--dtype bfloat16] [--slots 8] [--chunk 16]
                    [--max-prompt 4096] [--max-tokens 1024]
"""

from __future__ import annotations

import argparse
import sys
import time

from hqf_jax import cli
from hqf_jax.infer.batcher import Batcher
from hqf_jax.infer.engine import DECODE_IMPLS, DTYPES, Engine
from hqf_jax.infer.server import Limits, Server


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m serve", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a train.lm run folder")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    p.add_argument("--quant", default=None, help="quantize the dense layers: int8, int4, nf4, phi5u8, ...")
    p.add_argument("--decode-impl", default="jnp", choices=DECODE_IMPLS)
    p.add_argument("--slots", type=int, default=8, help="rows of the shared decode batch")
    p.add_argument("--chunk", type=int, default=16, help="decode steps between joins and leaves")
    p.add_argument("--min-chunk", type=int, default=None, help="shorter calls (chunk/2^k >= this) end a request "
                   "inside a chunk when another waits for its slot (default: off)")
    p.add_argument("--max-prompt", type=int, default=4096, help="longest prompt in bytes")
    p.add_argument("--max-tokens", type=int, default=1024, help="largest max_tokens a request may ask")
    a = p.parse_args(argv)
    start = time.perf_counter()
    engine = Engine.from_run(a.run, a.step, dtype=a.dtype, quant=a.quant, decode_impl=a.decode_impl,
                             batch=a.slots)  # quantized layers' kernels picked for the shared batch
    # progress on stderr (compiling takes seconds to tens of seconds: 20 s for a 125M int4 engine on an H200, 9 s in
    # bf16, docs/BENCHMARKS.md stop 35); stdout's first line is the address
    print(f"engine built in {time.perf_counter() - start:.1f} s ({a.quant or a.dtype}); compiling prefill and the "
          f"decode loop ({a.slots} slots, chunks of {a.chunk}) ...", file=sys.stderr, flush=True)
    batcher = Batcher(engine, a.slots, a.chunk, min_chunk=a.min_chunk)  # its empty slots' prefill compiles here
    batcher.warmup()
    server = Server(batcher, a.host, a.port, Limits(a.max_prompt, a.max_tokens),
                    model_name=a.run)
    print(f"serving {a.run} on {server.url} (POST /v1/completions, GET /health; ready in "
          f"{time.perf_counter() - start:.1f} s)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    cli.run_main(main)
