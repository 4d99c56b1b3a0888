"""Capacity of the holographic memory at the notes' tower depths, beside HRR and FHRR at equal memory.

    python -m studies.holo_capacity --out runs/holo_capacity                  # full: L = 4, 5, 6 on one GPU
    python -m studies.holo_capacity --out /tmp/hc --scale tiny               # CPU check, seconds

The claim it tests (issue 18, the notes): a tower of depth L = 6 recalls 95% of 200K stored patterns.
For each depth L the tower stores N random (context of 4 tokens, target) pairs into 16^L leaf buckets of
16 floats (basin-key routing, no episodic cache, no prototypes: the holographic part alone), and is
queried on a sample of the stored pairs with four rules on the same retrieval:
  * cosine + arg-max (the project's default),
  * vorticity-weighted score (hqf_jax.ops.grace: cos(G q, G c) + phi^-1 cos(<q>_2, <c>_2)) + arg-max,
  * a sample at temperature phi^-1 from softmax(score / T), for both scores (the notes' decoding rule).
Beside it, at EQUAL memory (the same 16 * 16^L stored floats): HRR and FHRR with traces of d floats in
16^(L+1) / d hash-routed buckets (hqf_jax.holo.baselines), d = 16 and d = 256, scored by arg-max.
The superposition bound k <= D / (2 ln V) items per trace of D floats (V candidates) gives, with Poisson
loads of N / traces per trace, the predicted recall P(the pair's trace holds <= floor(k) items); it is
drawn dashed for each trace size. Also reported: leaves actually occupied by the basin keys beside the
number a uniform hash fills (1 - e^(-N / 16^L) of them): the default coarse-to-fine keys quantise level d at
phi^-8 (phi^2)^(L-1-d), so at L = 6 the coarsest level rounds every coefficient of a rotation product to
the same integers and the deep leaves are unevenly used; a second tower with one resolution at every
level (level_ratio = 1, the basin key hashed with L seeds) shows what the same floats do with uniform
routing. Each depth's store / query wall time is device-synchronised.

Output in --out: table.md, results.json (every curve), capacity.png (recall vs N, one panel per depth).
Full scale: vocab 1024, N up to 10M, 16,384 queries per point; about 2-4 minutes on one H200, mostly
compiles (the L = 6 tower is 16.8M buckets x 16 floats = 1.1 GB; the baselines as much each).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax.holo import baselines as bl
from hqf_jax.holo import memory as hm
from hqf_jax.holo import tower
from hqf_jax.ops.constants import PHI_INV
from hqf_jax.report import write_report, save_figure

SCALES = {
    "tiny": dict(levels=(1, 2), vocab=64, points=(16, 64, 256, 1024), queries=256, chunk=256, dims=(16, 64)),
    "full": dict(levels=(4, 5, 6), vocab=1024, queries=16384, chunk=1 << 17, dims=(16, 256),
                 points=(1_000, 3_000, 10_000, 30_000, 100_000, 200_000, 300_000, 1_000_000, 3_000_000, 10_000_000)),
}
CONTEXT_LEN = 4
RULES = ("cosine argmax", "vorticity argmax", "cosine sample T=phi^-1", "vorticity sample T=phi^-1")


def bound_items(dim: int, vocab: int) -> float:
    """The superposition bound: items one trace of ``dim`` floats holds against ``vocab`` candidates."""
    return dim / (2.0 * math.log(vocab))


def bound_recall(n: int, traces: int, dim: int, vocab: int) -> float:
    """P(a stored pair's trace holds <= floor(k) items) with the other n - 1 spread Poisson(n / traces)."""
    k, lam = math.floor(bound_items(dim, vocab)), n / traces
    return sum(math.exp(-lam) * lam**j / math.factorial(j) for j in range(k)) if k >= 1 else 0.0


@partial(jax.jit, static_argnames=("config",))
def _holo_rules(state, qc, qt, key, *, config):
    s = hm.retrieve(state, qc, config=config)["scores"]
    sample = jax.random.categorical(key, s / PHI_INV, axis=1)
    return jnp.mean(jnp.argmax(s, axis=1) == qt), jnp.mean(sample == qt)


def _vsa(kind: str, dim: int, floats: int, vocab: int, seed: int):
    init, book, store, scores = ((bl.hrr_init, bl.hrr_codebook, bl.hrr_store, bl.hrr_scores) if kind == "HRR"
                                 else (bl.fhrr_init, bl.fhrr_codebook, bl.fhrr_store, bl.fhrr_scores))
    cb = book(jax.random.key(seed), vocab, dim)
    st = jax.jit(lambda tr, cb, c, t, v: store(tr, cb, c, t, valid=v))
    acc = jax.jit(lambda tr, cb, c, t: jnp.mean(jnp.argmax(scores(tr, cb, c), axis=1) == t))
    return init(floats // dim, dim), cb, st, acc


def run_depth(levels: int, sc: dict, ctx: np.ndarray, tgt: np.ndarray, seed: int) -> dict:
    """Every method and rule at one tower depth; curves are recall at each point of sc['points']."""
    vocab, chunk, q = sc["vocab"], sc["chunk"], sc["queries"]
    floats = 16 * 16**levels
    cfg = hm.HoloConfig(vocab_size=vocab, context_len=CONTEXT_LEN, levels=levels, cache_capacity=0, proto_k=0, seed=seed)
    vcfg = dataclasses.replace(cfg, score="vorticity")
    fcfg = dataclasses.replace(cfg, level_ratio=1.0)  # every level at the finest resolution: a uniform hash
    holo, flat = hm.init_memory(cfg), hm.init_memory(fcfg)
    vsas = {f"{k} d={d}": _vsa(k, d, floats, vocab, seed + 1 + i) for i, (k, d) in
            enumerate((k, d) for d in sc["dims"] for k in ("HRR", "FHRR"))}
    traces = {name: v[0] for name, v in vsas.items()}
    flat_name = f"holo L={levels} one-resolution routing, cosine argmax"
    curves = {f"holo L={levels} {r}": [] for r in RULES} | {flat_name: []} | {name: [] for name in vsas}
    occupied, occupied_flat, t_store, t_query, n = [], [], 0.0, 0.0, 0
    rng, key = np.random.default_rng(seed + 99), jax.random.key(seed)
    for point in sc["points"]:
        t0 = time.perf_counter()
        for s in range(n, point, chunk):
            k = min(chunk, point - s)
            c = jnp.asarray(np.pad(ctx[s:s + k], ((0, chunk - k), (0, 0))))
            t = jnp.asarray(np.pad(tgt[s:s + k], (0, chunk - k)))
            valid = jnp.arange(chunk) < k
            holo = hm.store(holo, c, t, valid, config=cfg)
            flat = hm.store(flat, c, t, valid, config=fcfg)
            for name, (_, cb, st, _) in vsas.items():
                traces[name] = st(traces[name], cb, c, t, valid)
        jax.block_until_ready((holo, flat, traces))
        t_store += time.perf_counter() - t0
        n = point
        idx = rng.integers(0, n, q)
        qc, qt = jnp.asarray(ctx[idx]), jnp.asarray(tgt[idx])
        t0 = time.perf_counter()
        key, k1, k2 = jax.random.split(key, 3)
        res = [*_holo_rules(holo, qc, qt, k1, config=cfg), *_holo_rules(holo, qc, qt, k2, config=vcfg)]
        res = [res[0], res[2], res[1], res[3], _holo_rules(flat, qc, qt, k1, config=fcfg)[0]]  # in curves' order
        res += [acc(traces[name], cb, qc, qt) for name, (_, cb, _, acc) in vsas.items()]
        res = [float(r) for r in jax.block_until_ready(res)]
        t_query += time.perf_counter() - t0
        for name, r in zip(curves, res):
            curves[name].append(r)
        leaf0 = tower.level_offsets(levels)[levels]
        occupied.append(int(jnp.sum(holo.counts[leaf0:] > 0)))
        occupied_flat.append(int(jnp.sum(flat.counts[leaf0:] > 0)))
        print(f"[holo_capacity] L={levels} N={n:>10,}: " + "  ".join(f"{k.replace(f'holo L={levels} ', '')} {v:.3f}"
                                                                    for k, v in zip(curves, res)), flush=True)
    dims = {f"holo L={levels} {r}": 16 for r in RULES} | {flat_name: 16} | {f"{k} d={d}": d for d in sc["dims"] for k in ("HRR", "FHRR")}
    bounds = {str(d): [bound_recall(p, floats // d, d, vocab) for p in sc["points"]] for d in sorted(set(dims.values()))}
    return dict(levels=levels, floats=floats, curves=curves, trace_dims=dims, bound_curves=bounds,
                bound_items={str(d): bound_items(d, vocab) for d in sorted(set(dims.values()))},
                leaves=16**levels, leaves_occupied=occupied, leaves_occupied_flat=occupied_flat,
                leaves_poisson=[round(16**levels * -math.expm1(-p / 16**levels)) for p in sc["points"]], store_s=t_store, query_s=t_query)


def plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = results["depths"]
    fig, axes = plt.subplots(1, len(depths), figsize=(5.2 * len(depths), 4.4), squeeze=False)
    for ax, d in zip(axes[0], depths):
        for name, ys in d["curves"].items():
            style = "-" if "argmax" in name or not name.startswith("holo") else ":"
            ax.plot(results["points"], ys, style, marker="o", ms=3, label=name)
        for dim, ys in d["bound_curves"].items():
            k = d["bound_items"][dim]
            ax.plot(results["points"], ys, "--", color="gray", alpha=0.5 + 0.5 * (dim == "16"),
                    label=f"bound D={dim}: k<={k:.1f}/trace, {d['floats'] // int(dim):,} traces")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("stored random (4-token context, target) pairs")
        ax.set_title(f"L={d['levels']}: {d['floats']:,} floats each (vocab {results['vocab']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("recall of stored pairs")
    save_figure(fig, path)


def table(results: dict) -> str:
    pts = results["points"]
    lines = [f"# Holographic memory capacity (vocab {results['vocab']}, {results['queries']:,} queries per point, "
             f"{results['device']})", "",
             "| depth | method | D per trace | bound k/trace | " + " | ".join(f"{p:,}" for p in pts) + " |",
             "|---|---|---|---|" + "---|" * len(pts)]
    for d in results["depths"]:
        for name, ys in d["curves"].items():
            dim = d["trace_dims"][name]
            lines.append(f"| {d['levels']} | {name} | {dim} | {d['bound_items'][str(dim)]:.2f} | "
                         + " | ".join(f"{y:.3f}" for y in ys) + " |")
        for dim, ys in d["bound_curves"].items():
            lines.append(f"| {d['levels']} | bound (Poisson loads), D={dim} | {dim} | {d['bound_items'][dim]:.2f} | "
                         + " | ".join(f"{y:.3f}" for y in ys) + " |")
        for label, key in (("leaves occupied", "leaves_occupied"), ("leaves occupied, one-resolution", "leaves_occupied_flat"),
                           ("leaves a uniform hash fills", "leaves_poisson")):
            lines.append(f"| {d['levels']} | {label} / {d['leaves']:,} | | | " + " | ".join(f"{o:,}" for o in d[key]) + " |")
    lines += ["", "Wall time per depth (store / query, device-synchronised): " + ", ".join(
        f"L={d['levels']} {d['store_s']:.1f} s / {d['query_s']:.1f} s" for d in results["depths"])
        + f"; total {results['wall_s']:.0f} s."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--levels", help="comma list of tower depths (default: the scale's)")
    ap.add_argument("--max-pairs", type=int, help="drop the scale's points above this")
    ap.add_argument("--queries", type=int)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sc = dict(SCALES[args.scale])
    if args.levels:
        sc["levels"] = tuple(int(v) for v in args.levels.split(","))
    if args.max_pairs:
        sc["points"] = tuple(p for p in sc["points"] if p <= args.max_pairs) or (args.max_pairs,)
    if args.queries:
        sc["queries"] = args.queries
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    total = sc["points"][-1]
    ctx = rng.integers(0, sc["vocab"], (total, CONTEXT_LEN), dtype=np.int32)
    tgt = rng.integers(0, sc["vocab"], total, dtype=np.int32)
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
    depths = [run_depth(L, sc, ctx, tgt, args.seed) for L in sc["levels"]]
    results = dict(scale=args.scale, device=device, vocab=sc["vocab"], context_len=CONTEXT_LEN, points=list(sc["points"]),
                   queries=sc["queries"], depths=depths, wall_s=time.perf_counter() - t0)
    text = table(results)
    out = write_report(args.out, text, results)
    plot(results, out / "capacity.png")
    print(text)
    print(f"[study] -> {out}")
    return results


if __name__ == "__main__":
    main()
