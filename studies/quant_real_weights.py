"""The phi-grid codec on real weights (issue 18, item 2), one process: pretrain a >= 100M-parameter token model
and a ~125M byte LM for a few minutes each, then for both: bits per weight against held-out quality for the
phi-grid (with and without sort, with and without recursion), int8, int4, NF4 and int-k at every width (so
each codec sits beside an integer code of equal bits), compression against fp32 and bf16, and the phi^-k
error-clustering test on their weight matrices.

    HQF_DATA_STORE=/tmp/store python -m studies.quant_real_weights --out runs/quant_real_weights \
        data.source=files data.paths=/tmp/pysrc                                    # <= 9 min, one H200

Quality: valid bits per byte on held-out files for both models (the token model's is its token loss over the
bytes its tokens stand for; table.md states its nats per token too). Bits per weight are the quantized leaves'
honest bits (codes + scales + permutations), "model" bits over every leaf (those a codec cannot take stay fp32).
The clustering test (hqf_jax.quant.analysis.band_statistics) runs on an even sample of rows of every matrix
(--cluster-weights per model). Writes table.md, results.json, quality_vs_bits.png into --out.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from hqf_jax import cli
from hqf_jax.data.catalog import load_corpus
from hqf_jax.quant import lm_adapter
from hqf_jax.quant.analysis import band_statistics, collect_matrices, energy_split
from hqf_jax.quant.evaluate import evaluate_methods
from hqf_jax.report import write_report, save_figure
from hqf_jax.trainer import token_task
from hqf_jax.trainer.budget import pretrain_byte_lm, pretrain_token_model

# the order is the priority: methods left when --total-seconds is spent are skipped (and say so)
METHODS = ["int8", "int4", "nf4", "phi5", "phi5u4", "phi5u8", "int:bits=5", "int:bits=9", "phi5:sort=true",
           "phi5u4:sort=true", "phi:depth=2:dev_bits=4", "phi:depth=2:dev_bits=4:sort=true",
           "phi:depth=2:dev_kind=grid:dev_bits=4", "int:bits=3", "int:bits=6", "int:bits=7", "int:bits=10",
           "int:bits=12", "nf4dq", "bf16"]
DATA_KEYS = ("source", "paths", "valid_fraction", "max_files", "store_dir")


def token_loss_fn(hf: Path, workdir: Path, tcfg):
    """(params, loss_fn(params) -> valid bpb, bytes per token) of the exported token model on its held-out ids."""
    from hqf_jax.nn.hf_loading import load_hf_decoder

    model = load_hf_decoder(str(hf), dtype=tcfg.get("compute_dtype", "float32"), param_dtype="float32", progress=False)
    tok = token_task.load_tokenizer(hf)
    valid = np.load(workdir / "tokens_valid.npy")
    evaluate = token_task.make_eval_fn(valid, token_task.token_byte_lengths(tok), tcfg.data.seq_len,
                                       tcfg.data.batch_size, tcfg.train.eval_max_tokens, tok.bos_token_id)
    bpt = evaluate(model)["valid_bytes_per_token"]
    return lm_adapter.params_of(model), lambda p: float(evaluate(lm_adapter.with_params(model, p))["valid_bpb"]), bpt


def sample_rows(mats: dict[str, np.ndarray], max_weights: int) -> dict[str, np.ndarray]:
    """Evenly spaced rows of every matrix, the same share of each, about `max_weights` in all."""
    total = sum(m.size for m in mats.values())
    share = min(1.0, max_weights / max(total, 1))
    out = {}
    for k, m in mats.items():
        n = max(1, int(round(m.shape[0] * share)))
        out[k] = m[np.linspace(0, m.shape[0] - 1, n).astype(int)]
    return out


def clustering(params, max_weights: int, n_null: int) -> dict:
    mats = sample_rows(collect_matrices(params, 64), max_weights)
    return {"sampled_weights": int(sum(m.size for m in mats.values())), "matrices": len(mats),
            "bands": band_statistics(mats, n_null=n_null), "energy_split": energy_split(mats)}


def pair_equal_bits(rows: list[dict]) -> None:
    """Each row gets the int-k row nearest in quantized bits per weight (its equal-bits integer code)."""
    ints = [r for r in rows if not r.get("skipped") and r.get("spec", "").startswith("int")]
    for r in rows:
        if r.get("skipped") or not ints or r in ints or not math.isfinite(r["quantized_bits_per_weight"]):
            continue
        near = min(ints, key=lambda i: abs(i["quantized_bits_per_weight"] - r["quantized_bits_per_weight"]))
        r["int_equal_bits"] = {"method": near["method"], "bits": near["quantized_bits_per_weight"], "loss": near["loss"]}


def table(report: dict) -> str:
    lines = []
    for name, m in report["models"].items():
        info = m["info"]
        extra = f", {m['bytes_per_token']:.2f} bytes per token" if "bytes_per_token" in m else ""
        lines += [f"### {name}: {info['params']:,} params, {info['steps']} steps ({info['seconds']:.0f} s"
                  f"{', capped by time' if info['capped'] else ''}), {info['train_flops']:.3g} FLOPs{extra}", "",
                  "| method | bits/w (quantized) | bits/w (model) | x vs fp32 | x vs bf16 | valid bpb | delta | "
                  "int-k at equal bits: bpb | SQNR dB |", "|---|---|---|---|---|---|---|---|---|"]
        for r in m["rows"]:
            if r.get("skipped"):
                lines.append(f"| {r['method']} | skipped (time budget) |||||||")
                continue
            q = r["quantized_bits_per_weight"]
            eq = r.get("int_equal_bits")
            eqs = f"{eq['loss']:.4f} ({eq['method']}, {eq['bits']:.2f} b)" if eq else ""
            lines.append(f"| {r['method']} | {q:.3f} | {r['model_bits_per_weight']:.3f} | {32 / q:.2f} | {16 / q:.2f} | "
                         f"{r['loss']:.4f} | {r['delta_loss']:+.4f} | {eqs} | {r['sqnr_db']:.1f} |"
                         if math.isfinite(q) else f"| {r['method']} | - | {r['model_bits_per_weight']:.1f} | 1 | 0.5 | "
                         f"{r['loss']:.4f} | 0 | | inf |")
        b = m["clustering"]["bands"]
        near = b["near_level"]
        lines += ["", f"phi^-k clustering on {m['clustering']['sampled_weights']:,} weights: near-level share "
                      f"{near['observed']:.4f} vs Gaussian null {near['gaussian_null']:.4f} (z = {near['z']:.1f}; "
                      f"the notes: 60% vs 15%); error-share distance vs Gaussian {b['error_share_distance_vs_gaussian']:.4f} "
                      f"(p = {b['error_share_p_value']:.3f}), vs a uniform grid {b['error_share_distance_vs_uniform_grid']:.4f}", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report["models"]), figsize=(6 * len(report["models"]), 4.5), squeeze=False)
    for ax, (name, m) in zip(axes[0], report["models"].items()):
        rows = [r for r in m["rows"] if not r.get("skipped") and math.isfinite(r["quantized_bits_per_weight"])]
        for kind, style in (("int", "C0o-"), ("phi", "C1s"), ("nf4", "C2^"), ("bf16", "C7D")):
            pts = sorted((r["quantized_bits_per_weight"], r["loss"]) for r in rows if r["method"].startswith(kind))
            if pts:
                ax.plot(*zip(*pts), style, label=kind if kind != "int" else "int-k (symmetric, g64)", ms=5)
        for r in rows:
            if r["method"].startswith("phi"):
                ax.annotate(r["method"], (r["quantized_bits_per_weight"], r["loss"]), fontsize=6)
        ax.axhline(m["rows"][0]["loss"], color="gray", ls=":", lw=0.8, label="unquantized")
        ax.set(xlabel="bits per weight (quantized leaves)", ylabel="valid bits per byte", title=name, yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--token-config", default="configs/token_lm_gpu.py")
    p.add_argument("--byte-config", default="configs/lm_125m.py")
    p.add_argument("--out", default="runs/quant_real_weights")
    p.add_argument("--pretrain-mb", type=float, default=120.0)
    p.add_argument("--valid-mb", type=float, default=4.0)
    p.add_argument("--token-seconds", type=float, default=80.0)
    p.add_argument("--byte-seconds", type=float, default=90.0)
    p.add_argument("--total-seconds", type=float, default=470.0, help="methods left when it is spent are skipped")
    p.add_argument("--compile-allowance", type=float, default=45.0)
    p.add_argument("--tflops", type=float, default=150.0, help="assumed throughput that plans the token model's steps")
    p.add_argument("--byte-tflops", type=float, default=0.0,
                   help="throughput that plans the byte LM's steps (0: the token pretraining's measured TFLOP/s)")
    p.add_argument("--token-steps", type=int, default=0, help="fixed steps instead of the time budget (tests)")
    p.add_argument("--byte-steps", type=int, default=0)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--cluster-weights", type=int, default=4_000_000)
    p.add_argument("--n-null", type=int, default=8)
    p.add_argument("--no-progress", action="store_true")
    cli.add_overrides(p, help="key=value for the byte LM (data.* also sets the token model's files); "
                               "token.key=value for the token model only")
    a = cli.parse(p, argv)
    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    bcfg = cli.load_config(a.byte_config, [o for o in a.overrides if not o.startswith("token.")])
    tcfg = cli.load_config(a.token_config, [f"data.{k}={bcfg.data[k]}" for k in DATA_KEYS]
                           + [o[len("token."):] for o in a.overrides if o.startswith("token.")])
    corpus = load_corpus(bcfg.data)
    print(f"[quant_real] {corpus.summary()}")
    methods = [m for m in a.methods.split(",") if m]
    stop = lambda: time.perf_counter() - t0 > a.total_seconds  # noqa: E731
    models = {}

    hf, tinfo = pretrain_token_model(tcfg, corpus, out / "token", pretrain_mb=a.pretrain_mb, valid_mb=a.valid_mb,
                                     seconds=a.token_seconds, tflops=a.tflops, steps=a.token_steps,
                                     compile_allowance=a.compile_allowance)
    params, loss_fn, bpt = token_loss_fn(hf, out / "token", tcfg)
    models["token model"] = {"info": tinfo, "bytes_per_token": bpt, "clustering": clustering(params, a.cluster_weights, a.n_null),
                             "rows": evaluate_methods(params, methods, loss_fn, stop=stop)}
    for r in models["token model"]["rows"]:
        if "loss" in r:
            r["token_loss_nats"] = r["loss"] * math.log(2) * bpt
    print(f"[quant_real] token model done at {time.perf_counter() - t0:.0f} s")

    left = a.total_seconds - (time.perf_counter() - t0) - 150.0  # keep ~150 s for its compile, methods and report
    byte_seconds = max(15.0, min(a.byte_seconds, left))
    task, binfo = pretrain_byte_lm(bcfg, corpus, out / "byte_lm", seconds=byte_seconds,
                                   tflops=a.byte_tflops or tinfo.get("tflops") or a.tflops,
                                   steps=a.byte_steps, compile_allowance=a.compile_allowance, progress=not a.no_progress)
    params = lm_adapter.params_of(task.model)
    loss_fn = lm_adapter.make_bpb_fn(task.model, corpus.reader("valid"), bcfg.data.seq_len, bcfg.data.batch_size,
                                     bcfg.train.eval_max_bytes)
    models["byte LM"] = {"info": binfo, "clustering": clustering(params, a.cluster_weights, a.n_null),
                         "rows": evaluate_methods(params, methods, loss_fn, stop=stop)}
    for m in models.values():
        pair_equal_bits(m["rows"])
    report = {"models": models, "seconds": time.perf_counter() - t0, "methods": methods,
              "configs": {"token": a.token_config, "byte": a.byte_config}}
    md = table(report)
    write_report(out, md, report)
    plot(report, out / "quality_vs_bits.png")
    print(md)
    print(f"[quant_real] {report['seconds']:.0f} s; table.md, results.json, quality_vs_bits.png -> {out}")
    return report


if __name__ == "__main__":
    cli.run_main(main)
