"""Generate bytes from a saved holographic memory:

    python -m eval.holo_generate --memory runs/holo/memory --prompt "def " --length 200

Sampling follows the memory's mixture distribution (``log_probs``) restricted to byte values,
at temperature phi^-1 by default (0 = greedy arg-max of the mixture).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax.errors import HqfError
from hqf_jax.holo import memory as hm
from hqf_jax.holo.checkpoint import restore_memory
from hqf_jax.ops.constants import NUM_BYTES, PHI_INV
from hqf_jax.ops.sampling import sample_token


@partial(jax.jit, static_argnames=("config", "length", "temperature"))
def generate(state: hm.HoloState, context: jnp.ndarray, key: jax.Array, *, config: hm.HoloConfig, length: int,
             temperature: float = PHI_INV) -> jnp.ndarray:
    """Sample ``length`` bytes after ``context`` (context_len,) int32; returns (length,) int32."""

    def step(ctx, k):
        lp = hm.log_probs(state, ctx[None], config=config)[0]
        nxt = sample_token(k, lp, temperature, vocab_limit=NUM_BYTES).astype(jnp.int32)
        return jnp.concatenate([ctx[1:], nxt[None]]), nxt

    _, out = jax.lax.scan(step, context.astype(jnp.int32), jax.random.split(key, length))
    return out


def prompt_context(prompt: bytes, context_len: int, pad: int = ord("\n")) -> np.ndarray:
    ids = list(prompt)[-context_len:]
    return np.array([pad] * (context_len - len(ids)) + ids, np.int32)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memory", default="runs/holo/memory")
    p.add_argument("--prompt", default="def ")
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--temperature", type=float, default=PHI_INV)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        state, cfg, _ = restore_memory(args.memory)
    except HqfError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    prompt = args.prompt.encode("utf-8")
    ctx = jnp.asarray(prompt_context(prompt, cfg.context_len))
    out = generate(state, ctx, jax.random.key(args.seed), config=cfg, length=args.length, temperature=args.temperature)
    text = prompt + bytes(np.asarray(out, np.uint8).tolist())
    sys.stdout.write(text.decode("utf-8", errors="replace") + "\n")


if __name__ == "__main__":
    main()
