"""Chunkwise retention side by side: Pallas kernel, jnp reference under XLA, fla, torch causal flash attention.

One process: checks the Pallas kernel against the jnp reference (outputs and gradients, bf16),
picks its tiling from a short sweep, then times forward and forward+backward of every variant at
B=8, H=16, d=128, T in {2048, 8192, 32768} (B=2 at 32768), bf16, and prints a table last.

    python -m bench.retention            # GPU (fla: pip install --no-deps wheels/*.whl first)
    python -m bench.retention --small    # tiny shapes, Pallas in interpret mode, on CPU

FLOPs (stated once, used for every row):
  retention (all three implementations, chunk C = 64):
      forward   = 2 B H T (C (Dk + Dv) + 2 Dk Dv)   (intra-chunk QK^T and AV, inter-chunk Q S and K^T V)
      fwd + bwd = 3 x forward
  causal softmax attention (FlashAttention-2 convention):
      forward   = 2 B H T^2 D                        (4 B H T^2 D halved by the causal mask)
      fwd + bwd = 3.5 x forward
fla's chunk_retention computes retention without the normalisations (row-sum and 1/sqrt(c_n))
and returns bf16; the Pallas kernel and the jnp reference compute the full normalised function
of hqf_jax.ops.retention and return float32.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

SMALL = "--small" in sys.argv
if SMALL:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory for torch in the same process

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from hqf_jax.ops import retention as R  # noqa: E402
from pallas_kernels.retention import Tiling, chunk_retention  # noqa: E402

CHUNK = 64


# ----------------------------------------------------------------------------- FLOPs


def retention_flops(b, h, t, dk, dv, chunk=CHUNK):
    fwd = 2.0 * b * h * t * (chunk * (dk + dv) + 2.0 * dk * dv)
    return fwd, 3.0 * fwd


def attention_flops(b, h, t, d):
    fwd = 2.0 * b * h * t * t * d
    return fwd, 3.5 * fwd


# ----------------------------------------------------------------------------- timing


def time_jax(fn, args, reps, warmup):
    """Seconds per call: warm-up calls, then `reps` back-to-back calls and one block_until_ready."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    out = None
    for _ in range(reps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / reps


def time_torch(fn, reps, warmup, cuda):
    import torch

    for _ in range(warmup):
        fn()
    if not cuda:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) / reps
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) / 1e3 / reps


# ----------------------------------------------------------------------------- JAX variants


def jax_inputs(b, h, t, d, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q, k, v = (jax.random.normal(ks[i], (b, h, t, d), jnp.float32).astype(jnp.bfloat16) for i in range(3))
    do = jax.random.normal(ks[3], (b, h, t, d), jnp.float32)
    return q, k, v, R.default_gammas(h), do


def jax_fns(retention_fn):
    """Jitted forward o = f(q, k, v) and forward+backward (o, dq, dk, dv) for a cotangent do."""

    def fwd(q, k, v, g):
        return retention_fn(q, k, v, g)[0]

    def fwd_bwd(q, k, v, g, do):
        o, vjp = jax.vjp(lambda q, k, v: fwd(q, k, v, g), q, k, v)
        return o, vjp(do)

    return jax.jit(fwd), jax.jit(fwd_bwd)


def pallas_fn(tiling, interpret, chunk):
    return lambda q, k, v, g: chunk_retention(q, k, v, g, chunk_size=chunk, interpret=interpret, tiling=tiling)


def reference_fn(chunk):
    return lambda q, k, v, g: R.retention_chunkwise(q, k, v, g, chunk_size=chunk)


def rel_err(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def check(shape, interpret, chunk, tiling):
    """Pallas (bf16 in) vs the float32 reference on the same bf16 values: max error / max |ref|."""
    b, h, t, d = shape
    q, k, v, g, do = jax_inputs(b, h, t, d, seed=1)
    _, fb_p = jax_fns(pallas_fn(tiling, interpret, chunk))
    _, fb_r = jax_fns(reference_fn(chunk))
    o_p, grads_p = fb_p(q, k, v, g, do)
    up = lambda x: x.astype(jnp.float32)  # noqa: E731
    o_r, grads_r = fb_r(up(q), up(k), up(v), g, do)
    errs = {"o": rel_err(o_p, o_r)} | {n: rel_err(a, r) for n, a, r in zip(("dq", "dk", "dv"), grads_p, grads_r)}
    ok = errs["o"] < 2e-2 and all(errs[n] < 5e-2 for n in ("dq", "dk", "dv"))
    return ok, errs


def tune(shape, interpret, chunk, reps, warmup, small):
    """Short sweep over tilings at one shape: best forward tiling, then best backward options on top of it."""
    b, h, t, d = shape
    q, k, v, g, do = jax_inputs(b, h, t, d)
    if small:
        fwd_cands = [Tiling()]
        bwd_opts = [dict(), dict(save_states=True)]
    else:
        fwd_cands = [
            Tiling(block_k_state=bk, block_v_state=bv, warps_state=ws, block_v_out=bo, warps_out=wo)
            for (bk, bv, ws) in ((64, 64, 4), (32, 32, 2), (64, 128, 8))
            for (bo, wo) in ((64, 4), (128, 8))
        ]
        bwd_opts = [
            dict(block_v_grad=bv, warps_grad=w, save_states=ss) for bv in (64, 128) for w in (4, 8) for ss in (False, True)
        ]
    log = []

    def measure(tiling, which):
        f, fb = jax_fns(pallas_fn(tiling, interpret, chunk))
        try:
            return time_jax(f, (q, k, v, g), reps, warmup) if which == "fwd" else time_jax(fb, (q, k, v, g, do), reps, warmup)
        except Exception as e:  # a tiling Triton cannot compile is skipped, and said so
            log.append(f"  {which} {tiling}: failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
            return float("inf")

    fwd_times = [(measure(c, "fwd"), c) for c in tqdm(fwd_cands, desc="tune forward", leave=False)]
    best_fwd = min(fwd_times, key=lambda x: x[0])[1]
    cands = [Tiling(**{**best_fwd.__dict__, **o}) for o in bwd_opts]
    bwd_times = [(measure(c, "fwd_bwd"), c) for c in tqdm(cands, desc="tune backward", leave=False)]
    best = min(bwd_times, key=lambda x: x[0])[1]
    for s, c in fwd_times:
        log.append(f"  fwd     {s * 1e3:9.3f} ms  {c}")
    for s, c in bwd_times:
        log.append(f"  fwd+bwd {s * 1e3:9.3f} ms  {c}")
    return best, log


# ----------------------------------------------------------------------------- torch variants


def torch_status():
    try:
        import torch
    except ImportError:
        return None, "torch not installed"
    return torch, ("cuda" if torch.cuda.is_available() else "cpu")


def fla_fn():
    try:
        from fla.ops.retention import chunk_retention as fla_chunk_retention
    except Exception as e:  # ImportError, or triton missing underneath
        return None, f"fla not installed ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
    import fla

    return fla_chunk_retention, f"fla {getattr(fla, '__version__', '?')}"


def torch_variant(name, torch, device, b, h, t, d, reps, warmup):
    """(fwd seconds, fwd+bwd seconds) of fla chunk_retention or torch causal SDPA."""
    torch.manual_seed(0)
    layout = (b, t, h, d) if name == "fla" else (b, h, t, d)  # fla wants [B, T, H, D]
    q, k, v, do = (torch.randn(layout, device=device, dtype=torch.bfloat16) for _ in range(4))
    q, k, v = (x.requires_grad_(True) for x in (q, k, v))
    cuda = device == "cuda"
    if name == "fla":
        fla_chunk_retention = fla_fn()[0]

        def f():
            return fla_chunk_retention(q, k, v, output_final_state=False)[0]
    else:
        F = torch.nn.functional

        def f():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        if cuda:  # flash attention kernel only; fall back to torch's own choice if it refuses
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def f_flash():
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)

            try:
                f_flash()
                f = f_flash
            except RuntimeError:
                pass

    def fwd():
        with torch.no_grad():
            return f()

    def fwd_bwd():
        o = f()
        return torch.autograd.grad(o, (q, k, v), do)

    return time_torch(fwd, reps, warmup, cuda), time_torch(fwd_bwd, reps, warmup, cuda)


# ----------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny shapes, Pallas in interpret mode, on CPU")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per measurement (default 20; 2 with --small)")
    ap.add_argument("--no-tune", action="store_true", help="skip the tiling sweep, use Tiling() defaults")
    ap.add_argument("--t", type=int, nargs="*", default=None, help="only these sequence lengths (default: all)")
    args = ap.parse_args(argv)

    small = args.small
    interpret = small
    chunk = 16 if small else CHUNK
    reps = args.reps or (2 if small else 20)
    warmup = 1 if small else 3
    d, h = (16, 2) if small else (128, 16)
    sizes = [(1, 64), (1, 100)] if small else [(8, 2048), (8, 8192), (2, 32768)]
    sizes = [(b, t) for b, t in sizes if args.t is None or t in args.t]
    check_shape = (1, 2, 50, 16) if small else (2, 4, 1000, 128)
    tune_shape = (1, h, 64, d) if small else (8, h, 8192, d)

    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, chunk {chunk}, bf16 inputs")

    def report_check(tiling):
        try:
            ok, errs = check(check_shape, interpret, chunk, tiling)
        except Exception as e:  # keep going: the peers' numbers are still worth printing
            print(f"check Pallas with {tiling}: failed ({type(e).__name__}: {str(e).splitlines()[0][:300]})")
            return False
        line = ", ".join(f"{k} {v:.2e}" for k, v in errs.items())
        print(f"check Pallas vs jnp reference at (B,H,T,d)={check_shape}: {line} {'OK' if ok else 'MISMATCH'}")
        return ok

    ok = report_check(Tiling())

    if args.no_tune:
        tiling, log = Tiling(), ["  (sweep skipped)"]
    else:
        tiling, log = tune(tune_shape, interpret, chunk, max(2, reps // 2), warmup, small)
    print(f"tiling sweep at (B,H,T,d)={tune_shape}:")
    print("\n".join(log))
    print(f"chosen: {tiling}")
    if tiling != Tiling():
        ok = report_check(tiling) and ok

    torch, tdev = torch_status()
    fla, fla_msg = fla_fn()
    print(fla_msg if fla is None else f"{fla_msg} found" + ("" if tdev == "cuda" else ", skipped: needs torch with CUDA"))
    torch_ok = torch is not None and (tdev == "cuda" or small)
    print(f"torch: {tdev if torch is not None else 'not installed'}" + ("" if torch_ok else " (skipping torch SDPA: needs CUDA)"))

    variants = ["pallas", "jnp-xla"] + (["fla"] if fla is not None and tdev == "cuda" else []) + (["torch-sdpa-causal"] if torch_ok else [])
    rows = []
    jobs = [(b, t, name) for b, t in sizes for name in variants]
    for b, t, name in tqdm(jobs, desc="bench"):
        try:
            if name in ("pallas", "jnp-xla"):
                q, k, v, g, do = jax_inputs(b, h, t, d)
                f, fb = jax_fns(pallas_fn(tiling, interpret, chunk) if name == "pallas" else reference_fn(chunk))
                s_f = time_jax(f, (q, k, v, g), reps, warmup)
                s_fb = time_jax(fb, (q, k, v, g, do), reps, warmup)
                del q, k, v, do
            else:
                s_f, s_fb = torch_variant("fla" if name == "fla" else "sdpa", torch, tdev, b, h, t, d, reps, warmup)
        except Exception as e:
            tqdm.write(f"{name} B={b} T={t}: failed ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
            continue
        flops = attention_flops(b, h, t, d) if name.startswith("torch") else retention_flops(b, h, t, d, d, chunk)
        rows.append((name, b, t, s_f, s_fb, flops))

    fla_tok = {(b, t): b * t / s_fb for name, b, t, _, s_fb, _ in rows if name == "fla"}
    print(f"\nH={h}, d={d}, bf16; tok/s = B*T / seconds; TFLOP/s from the formulas in the module docstring")
    hdr = f"{'variant':<18}{'B':>3}{'T':>7} | {'fwd ms':>9}{'Mtok/s':>9}{'TFLOP/s':>9} | {'f+b ms':>9}{'Mtok/s':>9}{'TFLOP/s':>9} | {'f+b vs fla':>10}"
    print(hdr)
    print("-" * len(hdr))
    for name, b, t, s_f, s_fb, (fl_f, fl_fb) in rows:
        tok = b * t
        ratio = f"{tok / s_fb / fla_tok[(b, t)]:.2f}x" if (b, t) in fla_tok else "-"
        print(
            f"{name:<18}{b:>3}{t:>7} | {s_f * 1e3:9.3f}{tok / s_f / 1e6:9.2f}{fl_f / s_f / 1e12:9.1f}"
            f" | {s_fb * 1e3:9.3f}{tok / s_fb / 1e6:9.2f}{fl_fb / s_fb / 1e12:9.1f} | {ratio:>10}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
