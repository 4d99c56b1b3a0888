"""Where the time of the GEMV kernel (quant_matmul mode="vec") goes: the same Pallas program with stages left out.

    python -m bench.quant_kernel_probe --shapes 4096x4096,4096x11008 --methods int4,phi5u8     # GPU

Per (shape, method, block config), batch 1, timed exactly like the quant kernel benchmark
(hqf_jax/quant/kernel_timing.py: device loop, L2-defeating copies, null loop subtracted), beside the bf16 XLA
matmul and the read floor (one XLA reduction over the bytes):
  load    the program loads its packed tiles (same BlockSpecs, same loop) and xors them into a register tile;
  unpack  + shift/mask every code and convert it to float (exponent trick), accumulated elementwise;
  slot    the full kernel, one column slot at a time in the words' own shape (acc="slot", the default);
  step    the full kernel, reducing every block_k step (acc="step");
  tile    the full kernel, accumulating the product tile and reducing once (acc="tile").
Differences between rows price the stages (H200.md: "time variants that leave one stage out").
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from hqf_jax import quant as Q
from hqf_jax.ops import quant_pack as qp
from hqf_jax.ops.quant_matmul import bf16_matmul
from hqf_jax.quant.kernel_timing import bf16_weight, copies_for, copy_tree, time_floor, time_for
from hqf_jax.quant.linear import prepare
from pallas_kernels.quant import BlockConfig, quant_matmul
from pallas_kernels.quant.decode import u2f
from pallas_kernels.quant.gemv import inner_sum, read_codes, vec_layout, view_elem
from pallas_kernels.quant.layout import flatten, unflatten


def stage_kernel(x, pw, blocks: BlockConfig, stage: str, interpret: bool = False):
    """Batch-1 program of mode vec with only `stage` ("load" or "unpack") of the work."""
    _, k = x.shape
    bn, bk = blocks.block_n, blocks.block_k
    lay = vec_layout(pw, bk)
    nu = bk // lay.u
    elem_names, _, _, flat = flatten(pw, {})
    widths = [w for n in elem_names for w, _ in qp.split_widths(pw.bits_dict[n])]
    n_elem = len(widths)
    arrays = [view_elem(a, lay, w, pw.rows, pw.cols) for a, w in zip(flat[:n_elem], widths, strict=True)]

    def kernel(*refs):
        o_ref = refs[-1]
        elem, _, _ = unflatten(refs[:n_elem], dataclasses.replace(pw, group={}), elem_names, [], [])

        part_refs = [ref for name in elem_names for ref in elem[name]]

        def body(t, acc):
            u0 = pl.multiple_of(t * nu, nu)
            if stage == "load":
                return tuple(a ^ ref[(slice(None), pl.ds(u0, nu)) + (slice(None),) * (ref.ndim - 2)]
                             for a, ref in zip(acc, part_refs, strict=True))
            v = None
            for name in elem_names:
                c = u2f(read_codes(elem[name], pw.bits_dict[name], lay, u0, nu, bn))
                v = c if v is None else v + c
            return (acc[0] + v,)

        if stage == "load":
            init = tuple(jnp.zeros((bn, nu, *a.shape[2:]), jnp.uint32) for a in arrays)
            acc = lax.fori_loop(0, k // bk, body, init)
            tot = sum(jnp.sum(inner_sum(u2f(a & jnp.uint32(0xFFFF))), axis=1) for a in acc)
        else:
            acc = lax.fori_loop(0, k // bk, body, (jnp.zeros((bn, nu, lay.u // lay.e, *lay.digits), jnp.float32),))
            tot = jnp.sum(inner_sum(acc[0]), axis=1)
        o_ref[0, :] = tot.astype(o_ref.dtype)

    in_specs = [pl.BlockSpec((bn, k // lay.u, *a.shape[2:]), lambda i, n=a.ndim - 2: (i, 0) + (0,) * n) for a in arrays]
    return pl.pallas_call(
        kernel, grid=(pw.rows // bn,), in_specs=in_specs, out_specs=pl.BlockSpec((1, bn), lambda i: (0, i)),
        out_shape=jax.ShapeDtypeStruct((1, pw.rows), x.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages),
        interpret=interpret, name=f"probe_{stage}",
    )(*arrays) + x[:, :1] * 0


STAGES = ("load", "unpack", "slot", "step", "tile")
CONFIGS = [(4, 1024, 4, 3), (2, 2048, 4, 3), (4, 2048, 4, 3), (2, 1024, 2, 4), (8, 1024, 4, 3), (4, 512, 2, 4),
           (1, 2048, 2, 3), (16, 512, 4, 3)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4096x4096,4096x11008")
    ap.add_argument("--methods", default="int4,phi5u8")
    ap.add_argument("--target-s", type=float, default=0.03)
    ap.add_argument("--small", action="store_true", help="CPU: 256x256 in interpret mode (runs the code only)")
    ap.add_argument("--stages", default=",".join(STAGES))
    args = ap.parse_args(argv)
    interpret = args.small
    shapes = [(256, 256)] if args.small else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    configs = [(8, 128, 4, 3)] if args.small else CONFIGS
    print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}")

    def timed(fn, x, ws, n):
        return time_for(fn, x, ws, n, args.target_s, interpret)[0]

    lines = []
    for k, n in shapes:
        x = jax.random.normal(jax.random.key(1), (1, k)).astype(jnp.bfloat16)
        w = jax.random.normal(jax.random.key(0), (k, n), jnp.float32) * 0.02
        w16 = bf16_weight(w)
        t16 = timed(bf16_matmul, x, [w16] + [copy_tree(w16) for _ in range(copies_for(k * n * 2, interpret) - 1)], n)
        for method in args.methods.split(","):
            pw = prepare(Q.quantize(w, method))
            copies = copies_for(pw.nbytes, interpret)
            pws = [pw] + [copy_tree(pw) for _ in range(copies - 1)]
            floor_ws = [jax.random.bits(jax.random.key(100 + c), (pw.nbytes // 4,), jnp.uint32) for c in range(copies)]
            tf = time_floor(x, floor_ws, n, args.target_s, interpret)
            for bn, bk, nw, st in configs:
                cfg = BlockConfig(block_n=bn, block_k=bk, num_warps=nw, num_stages=st, mode="vec")
                row = []
                for stage in args.stages.split(","):
                    if stage in ("load", "unpack"):
                        fn = (lambda x, p, cfg=cfg, stage=stage: stage_kernel(x, p, cfg, stage, interpret))
                    else:
                        c2 = dataclasses.replace(cfg, acc=stage)
                        fn = (lambda x, p, c2=c2: quant_matmul(x, p, blocks=c2, interpret=interpret))
                    try:
                        row.append(timed(fn, x, pws, n) * 1e6)
                    except Exception as e:  # noqa: BLE001 - a config Triton rejects is reported, not fatal
                        print(f"  {method} {k}x{n} {cfg} {stage}: FAILED {type(e).__name__}: {str(e)[:150]}")
                        row.append(float("nan"))
                line = (f"{k}x{n:<6} {method:>7} n{bn:<3} k{bk:<5} w{nw} st{st} | bf16 {t16 * 1e6:6.1f} floor {tf * 1e6:5.1f} | "
                        + " ".join(f"{v:7.1f}" for v in row))
                print(line, flush=True)
                lines.append(line)
    print(f"\nus per call, batch 1 ({args.stages.replace(',', ' / ')}):")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
