"""How far each retention form's logits are from a float32 reference, in float32 and in bfloat16 compute.

    python -m studies.form_precision [--config configs/lm.py] [--seq-len 256] [--batch 2] [--layers N]
    python -m studies.form_precision --small        # a 6-layer d=256 model, quick on a CPU

The reference is the parallel form in float32 with float32 matmuls ("highest" precision). Every form
(parallel, chunkwise, pallas; Pallas runs in interpret mode on a CPU) is run with the same weights in float32
and in bfloat16 compute. Reported per row: max |logit error| / max |reference logit| and the mean |error|.
A form whose bf16 error is far above the parallel form's bf16 error loses precision of its own (e.g. states
kept in bf16), beyond the rounding every bf16 form shares.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from hqf_jax import cli
from hqf_jax.report import write_report
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM


def form_errors(base: RetNetConfig, toks: jax.Array, forms=("parallel", "chunkwise", "pallas")) -> list[dict]:
    with jax.default_matmul_precision("highest"):
        run = nnx.jit(lambda m, t, form: m(t, form=form), static_argnames="form")  # one compile per form, not per op
        ref = run(RetNetLM(dataclasses.replace(base, compute_dtype="float32"), nnx.Rngs(0)), toks, "parallel")
        scale = float(jnp.abs(ref).max())
        rows = []
        for dtype in ("float32", "bfloat16"):
            model = RetNetLM(dataclasses.replace(base, compute_dtype=dtype), nnx.Rngs(0))
            for form in forms:
                err = jnp.abs(run(model, toks, form).astype(jnp.float32) - ref)
                rows.append({"dtype": dtype, "form": form, "max_rel": float(err.max()) / scale,
                             "mean_abs": float(err.mean())})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/lm.py")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--layers", type=int, default=0, help="override the config's number of layers")
    p.add_argument("--small", action="store_true")
    p.add_argument("--out", default="runs/studies/form_precision", help="folder for table.md and results.json")
    a = p.parse_args(argv)
    base = RetNetConfig.from_dict(cli.load_config_file(a.config).model)
    if a.small:
        base = RetNetConfig(d_model=256, num_layers=6, num_heads=4, qk_dim=256, v_dim=512, ffn_dim=512, chunk_size=32)
    if a.layers:
        base = dataclasses.replace(base, num_layers=a.layers)
    toks = jax.random.randint(jax.random.key(1), (a.batch, a.seq_len), 0, 256)
    head = (f"device: {jax.devices()[0].device_kind}; {base.num_layers} layers, d_model {base.d_model}, "
            f"T={a.seq_len}, random weights; reference: parallel form, float32, highest matmul precision")
    rows = form_errors(base, toks)
    table = "\n".join([head, "", "| compute | form | max error / max logit | mean abs error |", "|---|---|---|---|"]
                      + [f"| {r['dtype']} | {r['form']} | {r['max_rel']:.2e} | {r['mean_abs']:.2e} |" for r in rows])
    print(table)
    print(f"[study] -> {write_report(a.out, table, {'device': jax.devices()[0].device_kind, 'rows': rows})}")


if __name__ == "__main__":
    cli.run_main(main)
