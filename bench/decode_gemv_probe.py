"""Stage probe of the GEMV decode step (decode_impl="fused_gemv"): each of its kernel kinds at the byte LM's
layer shapes, timed alone beside the XLA form of the same work (RMSNorm, a bf16 dot, the epilogue: what the
fused_pallas step runs) and the read floor of its weight (the bytes at the same-run copy bandwidth).

    python -m bench.decode_gemv_probe [--config configs/lm_125m.py] [--batches 1,8]

It says whether the GEMV step's time goes to its kernels (each slower than XLA's dot of the same shape) or to
the launches between them. Timing: hqf_jax/quant/kernel_timing.py (fori_loop in one jit, L2-defeating weight
copies, null loop subtracted). GPU only (the kernels are Triton); on a CPU it exits 2.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

from hqf_jax import cli
from hqf_jax.nn.retnet import BYTE_VOCAB_SIZE
from hqf_jax.quant.kernel_timing import copies_for, copy_bandwidth, copy_tree, time_for
from pallas_kernels.decode_gemv import decode_gemv, pick_blocks


def xla_form(x, w, s=None, r=None, glu=False):
    """The same work as XLA ops: RMSNorm in float32 -> bf16 dot (float32 accumulation) -> silu*up / residual."""
    f = x.astype(jnp.float32)
    if s is not None:
        f = f * lax.rsqrt(jnp.mean(f * f, -1, keepdims=True) + 1e-6) * s.astype(jnp.float32)
    y = jnp.dot(f.astype(w.dtype), w, preferred_element_type=jnp.float32)
    if glu:
        h = w.shape[1] // 2
        y = jax.nn.silu(y[:, :h]) * y[:, h:]
    if r is not None:
        y = y + r.astype(jnp.float32)
    return y.astype(jnp.bfloat16)


def kinds(cfg):
    d, qk, v, f = cfg.d_model, cfg.qk_dim, cfg.v_dim, cfg.ffn_dim
    return [("norm + qkvg", d, 2 * qk + 2 * v, "norm"), ("o + residual", v, d, "res"),
            ("norm + gate/up, silu*up", d, 2 * f, "norm_glu"), ("down + residual", f, d, "res"),
            ("norm + head", d, cfg.get("vocab_size", BYTE_VOCAB_SIZE), "norm")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/lm_125m.py")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--target-s", type=float, default=0.05)
    a = ap.parse_args(argv)
    if jax.default_backend() != "gpu":
        print("bench.decode_gemv_probe times Triton kernels: it needs a GPU", file=sys.stderr)
        return 2
    cfg = cli.load_config(a.config, []).model
    bw = copy_bandwidth(1 << 30, 20)
    print(f"{jax.devices()[0].device_kind}; jax {jax.__version__}; {time.strftime('%Y-%m-%d')}; {a.config}; "
          f"copy bandwidth {bw / 1e9:.0f} GB/s")
    print("\n| kernel | K x N | batch | GEMV kernel µs | XLA form µs | kernel / XLA | read floor µs | blocks |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, k, n, mode in kinds(cfg):
        w = (jax.random.normal(jax.random.key(0), (k, n)) * k**-0.5).astype(jnp.bfloat16)
        ws = [w] + [copy_tree(w) for _ in range(copies_for(w.nbytes, False) - 1)]
        glu, out_n = "glu" in mode, n // 2 if "glu" in mode else n
        s = jnp.ones((k,), jnp.bfloat16) if "norm" in mode else None
        for b in (int(v) for v in a.batches.split(",")):
            x = jax.random.normal(jax.random.key(b), (b, k)).astype(jnp.bfloat16)
            r = jnp.ones((b, out_n), jnp.bfloat16) if mode == "res" else None
            t_k, _ = time_for(lambda x, w: decode_gemv(x, w, s, r, glu=glu, out_dtype=jnp.bfloat16), x, ws, out_n,
                              a.target_s, False)
            t_x, _ = time_for(lambda x, w: xla_form(x, w, s, r, glu), x, ws, out_n, a.target_s, False)
            blk = pick_blocks(b, k, out_n, glu)
            print(f"| {name} | {k} x {n} | {b} | {t_k * 1e6:.1f} | {t_x * 1e6:.1f} | {t_k / t_x:.2f} | "
                  f"{w.nbytes / bw * 1e6:.1f} | b{blk.block_b} k{blk.block_k} n{blk.block_n} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
