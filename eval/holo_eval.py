"""Honest evaluation of the SO(4)/Cl(3,1) holographic memory.

    python -m eval.holo_eval capacity [--max-pairs 1000000] [--levels 4] [--out runs/holo_eval]
    python -m eval.holo_eval language [--train-bytes 1000000] [--valid-bytes 100000]
    python -m eval.holo_eval all --small          # quick CPU smoke run of both

capacity: first, inside ONE bucket (no routing), recall against stored pairs per 16 floats
for the 4x4 superposition, HRR and FHRR (where each superposition breaks); then recall
accuracy (top-1 of the stored target, over a sample of the stored pairs)
against the number N of stored random (context of L tokens, target) pairs, for
  * holo-1: the whole memory in one 4x4 matrix (16 floats, no tower, no cache),
  * holo-tower: 16^levels leaf satellites of 16 floats (basin-key routing, no cache),
  * holo-tower+cache: the same plus an episodic cache of --cache-slots exact slots,
  * HRR and FHRR with the same number of stored floats as the tower's leaves, in buckets of
    d floats (hash routing), d = 16 (the tower's bucket size) and d = 256.
language: next-byte top-1 accuracy (the memory's ``predict`` rule, an episodic hit first, and
the arg-max of its tuned mixture, "top1mix"), bits per byte and next-word exact-match
accuracy (greedy, mixture arg-max for the memory) on
held-out python standard-library files (split by file), beside interpolated Kneser-Ney
n-grams trained on the same bytes. Train bytes are 64 KiB chunks spread evenly over the
training files, held-out bytes 4 KiB chunks spread over the held-out files, alternating
between a tune half and a test half: the memory's temperature and mixture weights are picked
on the tune half (27-setting grid) and every number is reported on the test half.

Writes results.json and PNG plots into --out and prints a table last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from hqf_jax.holo import baselines as bl
from hqf_jax.holo import language
from hqf_jax.holo import memory as hm
from hqf_jax.holo.episodic import episodic_bytes
from hqf_jax.holo.ngram import KneserNey
from hqf_jax.ops import so4
from hqf_jax.ops.constants import NUM_BYTES, PHI_INV


# ---------------------------------------------------------------- capacity
def _pairs(rng, n, vocab, length):
    return rng.integers(0, vocab, (n, length), dtype=np.int32), rng.integers(0, vocab, n, dtype=np.int32)


def _sweep_points(max_pairs: int) -> list[int]:
    pts = [int(m * 10**e) for e in range(3, 8) for m in (1, 3)]
    return [p for p in pts if p <= max_pairs] or [max_pairs]


class _Method:
    def __init__(self, name, floats, store, predict, note=""):
        self.name, self.floats, self.store, self.predict, self.note = name, floats, store, predict, note


def _holo_method(name, cfg, note=""):
    state = {"s": hm.init_memory(cfg)}

    def store(c, t):
        state["s"] = hm.store(state["s"], c, t, config=cfg)

    def predict(c):
        return hm.predict(state["s"], c, config=cfg)

    fp = hm.memory_footprint(cfg)
    m = _Method(name, fp["leaf_floats"], store, predict, note)
    m.state, m.cfg = state, cfg
    return m


def _vsa_method(name, kind, n_buckets, dim, vocab, seed):
    key = jax.random.key(seed)
    if kind == "hrr":
        book, traces = bl.hrr_codebook(key, vocab, dim), bl.hrr_init(n_buckets, dim)
        st, sc = jax.jit(bl.hrr_store), jax.jit(bl.hrr_scores)
    else:
        book, traces = bl.fhrr_codebook(key, vocab, dim), bl.fhrr_init(n_buckets, dim)
        st, sc = jax.jit(bl.fhrr_store), jax.jit(bl.fhrr_scores)
    state = {"t": traces}

    def store(c, t):
        state["t"] = st(state["t"], book, c, t)

    def predict(c):
        return jnp.argmax(sc(state["t"], book, c), axis=1)

    return _Method(name, n_buckets * dim, store, predict)


def run_capacity(args) -> dict:
    vocab, L, levels = args.vocab, args.context_len, args.levels
    leaf_floats = 16 * 16**levels
    base = dict(vocab_size=vocab, context_len=L, levels=levels, proto_k=0, seed=args.seed)
    methods = [
        _holo_method("holo-1 (one 4x4)", hm.HoloConfig(**{**base, "levels": 0}, cache_capacity=0)),
        _holo_method(f"holo-tower L={levels}", hm.HoloConfig(**base, cache_capacity=0)),
        _holo_method(
            f"holo-tower+cache ({args.cache_slots} slots)",
            hm.HoloConfig(**base, cache_capacity=args.cache_slots),
            note=f"+{args.cache_slots * (L + 1) * 4 / 2**20:.0f} MiB cache",
        ),
    ]
    for dim in (16, 256):
        methods.append(_vsa_method(f"HRR d={dim}", "hrr", leaf_floats // dim, dim, vocab, args.seed + 1))
        methods.append(_vsa_method(f"FHRR d={dim}", "fhrr", leaf_floats // dim, dim, vocab, args.seed + 2))
    methods[0].floats = 16
    points = _sweep_points(args.max_pairs)
    rng = np.random.default_rng(args.seed)
    stored_c, stored_t = [], []
    curves = {m.name: [] for m in methods}
    timings = {m.name: 0.0 for m in methods}
    n = 0
    batch = args.batch
    bar = tqdm(total=points[-1], desc="capacity", unit="pair")
    for target in points:
        while n < target:
            k = min(batch, target - n)
            c, t = _pairs(rng, batch, vocab, L)
            valid_c, valid_t = c[:k], t[:k]
            stored_c.append(valid_c)
            stored_t.append(valid_t)
            for m in methods:
                t0 = time.perf_counter()
                if k == batch:
                    m.store(jnp.asarray(c), jnp.asarray(t))
                else:  # last partial batch: store only the k new pairs (one extra compile per method)
                    m.store(jnp.asarray(valid_c), jnp.asarray(valid_t))
                timings[m.name] += time.perf_counter() - t0
            n += k
            bar.update(k)
        all_c, all_t = np.concatenate(stored_c), np.concatenate(stored_t)
        sample = rng.choice(n, size=min(args.test_pairs, n), replace=False)
        qc, qt = jnp.asarray(all_c[sample]), all_t[sample]
        for m in methods:
            acc = 0.0
            for s in range(0, len(sample), 4096):
                acc += float(np.sum(np.asarray(m.predict(qc[s : s + 4096])) == qt[s : s + 4096]))
            curves[m.name].append(acc / len(sample))
        stored_c, stored_t = [all_c], [all_t]
        bar.set_postfix({m.name.split(" ")[0]: f"{curves[m.name][-1]:.2f}" for m in methods[1:3]})
    bar.close()
    extra = {}
    cached = methods[2]
    extra["cache_dropped"] = int(cached.state["s"].cache.dropped)
    extra["cache_bytes"] = episodic_bytes(cached.state["s"].cache)
    return dict(
        points=points, curves=curves, floats={m.name: m.floats for m in methods},
        notes={m.name: m.note for m in methods}, store_seconds=timings, vocab=vocab, context_len=L,
        levels=levels, test_pairs=args.test_pairs, **extra,
    )


def run_bucket_capacity(args) -> dict:
    """Accuracy against pairs per 16 stored floats inside ONE bucket (no routing, no hashing):
    where each superposition breaks, independent of the bucket count. ``trials`` independent
    buckets are filled with n random pairs each and every pair is queried."""
    vocab, L, trials = args.vocab, args.context_len, args.bucket_trials
    rng = np.random.default_rng(args.seed + 7)
    emb = so4.haar_so4(jax.random.key(args.seed), (vocab,))
    hrr16, hrr256 = bl.hrr_codebook(jax.random.key(1), vocab, 16), bl.hrr_codebook(jax.random.key(2), vocab, 256)
    fh16, fh256 = bl.fhrr_codebook(jax.random.key(3), vocab, 16), bl.fhrr_codebook(jax.random.key(4), vocab, 256)

    def holo_acc(ctx, tgt):  # ctx (trials, n, L), tgt (trials, n)
        c = so4.context_product(emb[ctx], axis=2)  # (trials, n, 4, 4)
        m = jnp.sum(c @ emb[tgt], axis=1, keepdims=True)  # one 4x4 superposition per trial
        r = so4.unbind(m, c).reshape(ctx.shape[0], ctx.shape[1], 16)
        return jnp.mean(jnp.argmax(r @ emb.reshape(vocab, 16).T, axis=-1) == tgt)

    def vsa_acc(kind, book, ctx, tgt):
        t, n = ctx.shape[:2]
        flat_c, flat_t = ctx.reshape(t * n, L), tgt.reshape(t * n)
        dim = book.shape[1] * (2 if kind == "fhrr" else 1)
        init, store, scores = (bl.hrr_init, bl.hrr_store, bl.hrr_scores) if kind == "hrr" else (bl.fhrr_init, bl.fhrr_store, bl.fhrr_scores)
        bucket = jnp.repeat(jnp.arange(t, dtype=jnp.int32), n)  # trial i -> trace i (no hash routing)
        tr = store(init(t, dim), book, flat_c, flat_t, bucket)
        return jnp.mean(jnp.argmax(scores(tr, book, flat_c, bucket), axis=1) == flat_t)

    per16 = [0.0625, 0.125, 0.25, 0.5, 1, 2, 3, 4, 6, 8]
    curves = {"holo 4x4 (16 floats)": [], "HRR d=16": [], "FHRR d=16": [], "HRR d=256": [], "FHRR d=256": []}
    xs = {k: [] for k in curves}
    for p in tqdm(per16, desc="bucket"):
        for name, floats in (("holo 4x4 (16 floats)", 16), ("HRR d=16", 16), ("FHRR d=16", 16), ("HRR d=256", 256), ("FHRR d=256", 256)):
            n = int(round(p * floats / 16))
            if n < 1:
                continue
            t = max(8, min(trials, (trials * 4) // n))
            if name.endswith("256"):
                t = max(4, t // 16)
            ctx = jnp.asarray(rng.integers(0, vocab, (t, n, L)), jnp.int32)
            tgt = jnp.asarray(rng.integers(0, vocab, (t, n)), jnp.int32)
            if name.startswith("holo"):
                acc = holo_acc(ctx, tgt)
            else:
                kind = "hrr" if name.startswith("HRR") else "fhrr"
                book = {"HRR d=16": hrr16, "HRR d=256": hrr256, "FHRR d=16": fh16, "FHRR d=256": fh256}[name]
                acc = vsa_acc(kind, book, ctx, tgt)
            curves[name].append(float(acc))
            xs[name].append(n * 16 / floats)
    return dict(curves=curves, x=xs, vocab=vocab, context_len=L)


def plot_bucket(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, ys in res["curves"].items():
        ax.plot(res["x"][name], ys, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("stored pairs per 16 floats (one bucket, no routing)")
    ax.set_ylabel("recall top-1 accuracy")
    ax.set_title(f"one superposition: vocab {res['vocab']}, context {res['context_len']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_capacity(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, ys in res["curves"].items():
        label = f"{name}: {res['floats'][name]:,} floats {res['notes'].get(name, '')}".strip()
        ax.plot(res["points"], ys, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("stored random (context, target) pairs")
    ax.set_ylabel("recall top-1 accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"capacity: vocab {res['vocab']}, context {res['context_len']} tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- language
def _language_variants(args) -> dict:
    common = dict(
        vocab_size=NUM_BYTES, context_len=args.context_len, levels=args.lang_levels, cache_capacity=args.lang_cache_slots,
        proto_depth=args.proto_depth, proto_k=8, mix_episodic=0.3, mix_proto=0.7, seed=args.seed,
    )
    return {
        "holo haar": hm.HoloConfig(**common),
        "holo grounded": hm.HoloConfig(**common, embedding="grounded"),
        "holo haar, no prototypes": hm.HoloConfig(**{**common, "proto_k": 0}),
    }


def run_language(args) -> dict:
    from hqf_jax.data.sources import load_stdlib

    corpus = load_stdlib(args.valid_fraction, args.max_files or None)
    train = language.spread(corpus.stream("train"), args.train_bytes, chunk=1 << 16)
    valid = corpus.stream("valid")
    tune = language.spread(valid, args.valid_bytes // 2, chunk=4096, parity=0)
    test = language.spread(valid, args.valid_bytes // 2, chunk=4096, parity=1)
    print(f"[language] {corpus.summary()}; using {len(train):,} train bytes, {len(tune):,} tune + {len(test):,} test bytes")
    rows = {}
    starts = language.word_starts(test, max(args.context_len, max(args.kn_orders)), args.words, args.seed)
    for order in args.kn_orders:
        t0 = time.perf_counter()
        kn = KneserNey(order).fit(train)
        r = kn.evaluate(test)
        r["word_acc"] = language.greedy_word_accuracy(
            lambda c, kn=kn: np.argmax(kn.distribution(c), axis=1), test, max(order - 1, 1) if order > 1 else 1, starts
        ) if order > 1 else float("nan")
        r["seconds"] = time.perf_counter() - t0
        rows[f"Kneser-Ney order {order}"] = r
        print(f"[language] KN{order}: {r}")
    vectors = language.cooccurrence_vectors(train, NUM_BYTES)
    for name, cfg in _language_variants(args).items():
        t0 = time.perf_counter()
        state = hm.init_memory(cfg, jnp.asarray(vectors) if cfg.embedding == "grounded" else None)
        state = language.train_memory(state, cfg, train, args.batch_lang, args.dream_every)
        grid = [(t, mp, me) for t in (PHI_INV, PHI_INV**3, PHI_INV**6) for mp in (0.5, 0.9, 0.99) for me in (0.1, 0.3, 0.6)]
        tuned = language.evaluate_memory(state, cfg, tune, args.batch_lang, grid=grid)
        r = language.evaluate_memory(state, cfg, test, args.batch_lang, grid=[tuned["setting"]])
        r.pop("bpb_grid")
        r["cache_dropped"] = int(state.cache.dropped)
        r["word_acc_cache_first"] = language.greedy_word_accuracy(
            lambda c, s=state, cfg=cfg: hm.predict(s, jnp.asarray(c, jnp.int32), config=cfg), test, cfg.context_len, starts
        )
        r["word_acc"] = language.greedy_word_accuracy(
            lambda c, s=state, cfg=cfg, st=r["setting"]: language.mixture_top1(s, jnp.asarray(c, jnp.int32), *st, config=cfg),
            test, cfg.context_len, starts,
        )
        r["seconds"] = time.perf_counter() - t0
        rows[name] = r
        print(f"[language] {name}: {r}")
    import zlib
    import lzma

    rows["zlib -9 (whole test slice)"] = dict(bpb=8 * len(zlib.compress(test.tobytes(), 9)) / len(test))
    rows["xz (whole test slice)"] = dict(bpb=8 * len(lzma.compress(test.tobytes(), preset=9)) / len(test))
    return dict(rows=rows, train_bytes=len(train), test_bytes=len(test), words=len(starts), context_len=args.context_len)


def plot_language(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in res["rows"] if "top1" in res["rows"][n]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].barh(names, [res["rows"][n].get("top1_mixture", res["rows"][n]["top1"]) for n in names], color="tab:blue")
    axes[0].barh(names, [res["rows"][n]["top1"] for n in names], color="tab:cyan", height=0.4, label="memory: cache-first rule")
    axes[0].set_xlabel("next-byte top-1 accuracy (memory: mixture arg-max)")
    axes[0].legend(fontsize=7, loc="lower right")
    axes[1].barh(names, [res["rows"][n]["bpb"] for n in names], color="tab:orange")
    axes[1].set_xlabel("bits per byte (lower is better)")
    for ax in axes:
        ax.grid(alpha=0.3, axis="x")
    axes[1].set_yticks([])
    fig.suptitle(f"held-out stdlib bytes ({res['test_bytes']:,}), trained on {res['train_bytes']:,} bytes")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- main
def _print_tables(results: dict) -> None:
    if "bucket" in results:
        r = results["bucket"]
        print(f"\none bucket (recall top-1 against stored pairs per 16 floats, vocab {r['vocab']})")
        for name, ys in r["curves"].items():
            print(f"{name:22s} " + " ".join(f"{x:g}:{y:.3f}" for x, y in zip(r["x"][name], ys)))
    if "capacity" in results:
        r = results["capacity"]
        print(f"\ncapacity (recall top-1, vocab {r['vocab']}, context {r['context_len']}, {r['test_pairs']} test pairs)")
        head = f"{'method':38s} {'floats':>10s} " + " ".join(f"{p:>8,d}" for p in r["points"])
        print(head)
        for name, ys in r["curves"].items():
            print(f"{name:38s} {r['floats'][name]:>10,d} " + " ".join(f"{y:8.3f}" for y in ys))
        print(f"episodic cache: {r['cache_bytes'] / 2**20:.1f} MiB, {r['cache_dropped']} inserts dropped (table full)")
    if "language" in results:
        r = results["language"]
        print(f"\nlanguage (held-out {r['test_bytes']:,} bytes, {r['words']} word starts)")
        print(f"{'model':34s} {'top1':>7s} {'top1mix':>7s} {'bpb':>7s} {'word':>7s} {'hit':>6s}")
        for name, row in r["rows"].items():
            top1 = f"{row['top1']:7.3f}" if "top1" in row else "      -"
            top1 += f" {row['top1_mixture']:7.3f}" if "top1_mixture" in row else "       -"
            word = f"{row['word_acc']:7.3f}" if "word_acc" in row and not math.isnan(row["word_acc"]) else "      -"
            hit = f"{row['episodic_hit_rate']:6.2f}" if "episodic_hit_rate" in row else "     -"
            print(f"{name:34s} {top1} {row['bpb']:7.3f} {word} {hit}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["capacity", "bucket", "language", "all"], help="capacity includes bucket")
    p.add_argument("--out", default="runs/holo_eval")
    p.add_argument("--small", action="store_true", help="tiny CPU smoke sizes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-pairs", type=int, default=1_000_000)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--context-len", type=int, default=4)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--cache-slots", type=int, default=1 << 20)
    p.add_argument("--test-pairs", type=int, default=8192)
    p.add_argument("--bucket-trials", type=int, default=256)
    p.add_argument("--batch", type=int, default=1 << 16)
    p.add_argument("--train-bytes", type=int, default=1_000_000)
    p.add_argument("--valid-bytes", type=int, default=200_000)
    p.add_argument("--valid-fraction", type=float, default=0.05)
    p.add_argument("--max-files", type=int, default=0)
    p.add_argument("--kn-orders", type=int, nargs="+", default=[3, 5, 6])
    p.add_argument("--lang-levels", type=int, default=4)
    p.add_argument("--lang-cache-slots", type=int, default=1 << 20)
    p.add_argument("--proto-depth", type=int, default=4)
    p.add_argument("--dream-every", type=int, default=16)
    p.add_argument("--batch-lang", type=int, default=8192)
    p.add_argument("--words", type=int, default=2000)
    args = p.parse_args(argv)
    if args.small:
        args.max_pairs = min(args.max_pairs, 30_000)
        args.levels, args.cache_slots, args.test_pairs, args.batch = 2, 1 << 14, 1024, 4096
        args.bucket_trials = 32
        args.train_bytes, args.valid_bytes, args.max_files = 60_000, 20_000, args.max_files or 40
        args.kn_orders, args.lang_levels, args.lang_cache_slots, args.proto_depth = [3, 5], 2, 1 << 16, 2
        args.batch_lang, args.words = 2048, 200
    os.makedirs(args.out, exist_ok=True)
    results = {"device": str(jax.devices()[0]), "args": vars(args)}
    if args.part in ("capacity", "bucket", "all"):
        results["bucket"] = run_bucket_capacity(args)
        plot_bucket(results["bucket"], os.path.join(args.out, "bucket_capacity.png"))
    if args.part in ("capacity", "all"):
        results["capacity"] = run_capacity(args)
        plot_capacity(results["capacity"], os.path.join(args.out, "capacity.png"))
    if args.part in ("language", "all"):
        results["language"] = run_language(args)
        plot_language(results["language"], os.path.join(args.out, "language.png"))
    with open(os.path.join(args.out, f"results_{args.part}.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    print(f"\n[holo_eval] wrote {args.out}/results_{args.part}.json and PNG plots ({results['device']})")
    _print_tables(results)


if __name__ == "__main__":
    main()
