"""Speed of the holographic memory and its Cl(3,1) kernels, one process, table printed last.

    python -m bench.holo            # GPU sizes
    python -m bench.holo --small    # CPU check (Pallas in interpret mode, tiny sizes)

Measured in the same run:
  * HBM copy bandwidth (y = x + 1 over a large float32 array: 2 bytes moved per byte of x),
  * the Cl(3,1) geometric product of N pairs: jnp dense Cayley einsum, jnp sparse table,
    jnp blade-major unrolled (XLA fusion), Pallas soa and aos kernels; GB/s counts 3 x 64 bytes
    per product (two inputs read, one output written) and is compared with the copy bandwidth,
  * the context chain (T = 4 factors): jnp fold, Pallas chains, the fused gather-chain kernel
    (ids + table -> products), and the 4x4 matrix form (64 instead of 256 multiply-adds),
  * memory store (gather, chain, route, bind, scatter-add into 16^levels satellites, with and
    without the episodic cache) and retrieve (unbind + scoring matmul against --vocab tokens +
    arg-max) in patterns/s, beside a bf16 matmul's TFLOP/s measured here,
  * episodic cache insert and lookup in items/s.
Every variant is checked against its reference before it is timed (max abs error printed);
a variant that fails to build prints FAILED with the reason and the others still run.
Timing: compile + one warm-up call, then ``--reps`` calls dispatched back to back and one
``block_until_ready`` at the end, divided by the number of calls.
"""

from __future__ import annotations

import argparse
import time
import traceback
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax.holo import episodic
from hqf_jax.holo import memory as hm
from hqf_jax.ops import clifford as cl
from hqf_jax.ops import so4
from pallas_kernels import geometric_product as K

ROWS: list[dict] = []


def _time(fn, *args, reps: int) -> float:
    out = fn(*args)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / reps


def _row(group, name, seconds, *, items=None, unit="items/s", nbytes=None, flops=None, err=None, note=""):
    r = dict(group=group, name=name, ms=seconds * 1e3, note=note, err=err)
    if items is not None:
        r["rate"] = items / seconds
        r["unit"] = unit
    if nbytes is not None:
        r["gbs"] = nbytes / seconds / 1e9
    if flops is not None:
        r["tflops"] = flops / seconds / 1e12
    ROWS.append(r)
    return r


def _failed(group, name, e):
    ROWS.append(dict(group=group, name=name, failed=f"{type(e).__name__}: {str(e).splitlines()[0][:90] if str(e) else ''}"))
    if _VERBOSE:
        traceback.print_exc()


def _err(a, b) -> float:
    return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


_VERBOSE = False


def bench_copy(n: int, reps: int) -> float:
    x = jnp.ones((n,), jnp.float32)
    f = jax.jit(lambda v: v + 1.0)
    t = _time(f, x, reps=reps)
    r = _row("hbm", f"copy y=x+1 ({n * 4 / 2**20:.0f} MiB)", t, nbytes=2 * n * 4)
    return r["gbs"]


def bench_matmul(n: int, reps: int) -> float:
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    t = _time(f, a, a, reps=reps)
    return _row("matmul", f"bf16 matmul {n}^3", t, flops=2 * n**3)["tflops"]


def bench_product(n: int, reps: int, interpret: bool, configs):
    key = jax.random.key(0)
    a = jax.random.normal(key, (n, 16), jnp.float32)
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, 16), jnp.float32)
    at, bt = a.T, b.T
    ref = jax.jit(cl.geometric_product)(a, b)
    nbytes = 3 * n * 16 * 4
    variants = {
        "jnp einsum dense Cayley (aos)": (jax.jit(cl.geometric_product_einsum), (a, b), False),
        "jnp sparse table (aos)": (jax.jit(cl.geometric_product), (a, b), False),
        "jnp blade-major unrolled (soa)": (jax.jit(cl.geometric_product_blade_major), (at, bt), True),
    }
    for blk, warps in configs:
        for layout, args_, soa in (("soa", (at, bt), True), ("aos", (a, b), False)):
            fn = jax.jit(partial(K.geometric_product_pallas, layout=layout, block=blk, num_warps=warps, interpret=interpret))
            variants[f"pallas {layout} block={blk} warps={warps}"] = (fn, args_, soa)
    for name, (fn, args, soa) in variants.items():
        try:
            out = fn(*args)
            err = _err(out.T if soa else out, ref)
            t = _time(fn, *args, reps=reps)
            _row("product", name, t, items=n, unit="products/s", nbytes=nbytes, err=err)
        except Exception as e:  # noqa: BLE001 - report and continue with the other variants
            _failed("product", name, e)


def bench_chain(n: int, steps: int, vocab: int, reps: int, interpret: bool, configs):
    key = jax.random.key(1)
    mats = so4.haar_so4(key, (vocab,))
    table = cl.from_matrix(mats)  # (V, 16) multivectors of the token rotations
    ids = jax.random.randint(jax.random.fold_in(key, 2), (n, steps), 0, vocab)
    x = table[ids]  # (n, T, 16)
    xs = jnp.transpose(x, (1, 2, 0))  # (T, 16, n)
    ref = jax.jit(lambda v: cl.product_chain(v, axis=1))(x)
    nbytes = (steps + 1) * n * 16 * 4

    def blade_major_fold(v):
        acc = v[0]
        for t in range(1, v.shape[0]):
            acc = cl.geometric_product_blade_major(acc, v[t])
        return acc

    variants = {
        "jnp sparse fold (aos, pre-gathered)": (jax.jit(lambda v: cl.product_chain(v, axis=1)), (x,), False, nbytes),
        "jnp blade-major fold (soa, pre-gathered)": (jax.jit(blade_major_fold), (xs,), True, nbytes),
        "jnp gather + sparse fold (ids in)": (
            jax.jit(lambda tb, i: cl.product_chain(tb[i], axis=1)), (table, ids), False, n * steps * 4 + n * 64),
    }
    for blk, warps in configs:
        kw = dict(block=blk, num_warps=warps, interpret=interpret)
        variants[f"pallas chain soa block={blk} warps={warps}"] = (
            jax.jit(partial(K.product_chain_pallas, layout="soa", **kw)), (xs,), True, nbytes)
        variants[f"pallas chain aos block={blk} warps={warps}"] = (
            jax.jit(partial(K.product_chain_pallas, layout="aos", **kw)), (x,), False, nbytes)
        variants[f"pallas gather-chain block={blk} warps={warps} (ids in)"] = (
            jax.jit(partial(K.gather_chain_pallas, **kw)), (table.T, ids.T), True, n * steps * 4 + n * 64)
    for name, (fn, args, soa, nb) in variants.items():
        try:
            out = fn(*args)
            err = _err(out.T if soa else out, ref)
            t = _time(fn, *args, reps=reps)
            _row("chain", name, t, items=n, unit="contexts/s", nbytes=nb, err=err)
        except Exception as e:  # noqa: BLE001
            _failed("chain", name, e)
    try:  # the 4x4 matrix representation of the same chain
        fm = jax.jit(lambda m, i: so4.context_product(m[i], axis=1))
        out = fm(mats, ids)
        err = _err(cl.from_matrix(out), ref)
        t = _time(fm, mats, ids, reps=reps)
        _row("chain", "jnp 4x4 matrix chain (ids in)", t, items=n, unit="contexts/s", nbytes=n * steps * 4 + n * 64, err=err)
    except Exception as e:  # noqa: BLE001
        _failed("chain", "jnp 4x4 matrix chain", e)


def bench_memory(batch: int, vocab: int, levels: int, cache_slots: int, reps: int, score_vocab: int, retrieve_batch: int):
    rng = np.random.default_rng(0)
    ctx = jnp.asarray(rng.integers(0, vocab, (batch, 4)), jnp.int32)
    tgt = jnp.asarray(rng.integers(0, vocab, batch), jnp.int32)
    for name, cache in (("store (no cache)", 0), (f"store + episodic ({cache_slots} slots)", cache_slots)):
        try:
            cfg = hm.HoloConfig(vocab_size=vocab, context_len=4, levels=levels, cache_capacity=cache, proto_k=0)
            state = hm.init_memory(cfg)
            # every timed call stores into the same empty memory (a table refilled each call would fill up)
            f = jax.jit(partial(hm.store, config=cfg))
            first = f(state, ctx, tgt)
            want = state.tower.at[hm.leaf_of(cfg, hm.context_matrices(state.emb, ctx)) + (first.tower.shape[0] - 16**levels)].add(
                cfg.bind_weight * hm.context_matrices(state.emb, ctx) @ state.emb[tgt])
            err = _err(first.tower, want)
            t = _time(f, state, ctx, tgt, reps=reps)
            nb = batch * (4 * 5 + 2 * 64 + (2 * 5 * 4 if cache else 0))
            _row("memory", f"{name}, L={levels}, batch {batch}", t, items=batch, unit="patterns/s", err=err, nbytes=nb,
                 note="bytes: ids+target read, 64-B bucket read-modify-write" + (", 20-B cache slot RMW" if cache else ""))
        except Exception as e:  # noqa: BLE001
            _failed("memory", name, e)
    try:  # retrieve against a large vocabulary: unbind + (B,16)x(16,V) scores + arg-max
        cfg = hm.HoloConfig(vocab_size=score_vocab, context_len=4, levels=levels, cache_capacity=0, proto_k=0)
        state = hm.init_memory(cfg)
        c2 = jnp.asarray(rng.integers(0, score_vocab, (retrieve_batch, 4)), jnp.int32)
        t2 = jnp.asarray(rng.integers(0, score_vocab, retrieve_batch), jnp.int32)
        state = hm.store(state, c2[:256], t2[:256], config=cfg)
        f = jax.jit(lambda s, c: hm.predict(s, c, config=cfg))
        acc = float(jnp.mean(f(state, c2[:256]) == t2[:256]))
        t = _time(f, state, c2, reps=reps)
        _row("memory", f"retrieve+score V={score_vocab}, batch {retrieve_batch}", t, items=retrieve_batch, unit="patterns/s",
             flops=2 * retrieve_batch * 16 * score_vocab, nbytes=retrieve_batch * score_vocab * 4,
             note=f"recall of 256 stored: {acc:.2f}; GB/s = score matrix written once")
    except Exception as e:  # noqa: BLE001
        _failed("memory", "retrieve", e)
    try:
        cache = episodic.episodic_init(cache_slots, 4)
        ins = jax.jit(lambda c, x, y: episodic.episodic_insert(c, x, y))
        filled = ins(cache, ctx, tgt)
        found, val = episodic.episodic_lookup(filled, ctx)
        err = float(1.0 - jnp.mean((val == tgt) | ~found)) + float(1.0 - jnp.mean(found))
        t = _time(ins, cache, ctx, tgt, reps=reps)
        _row("episodic", f"insert {batch} into {cache_slots} slots", t, items=batch, err=err)
        look = jax.jit(lambda c, x: episodic.episodic_lookup(c, x))
        t = _time(look, filled, ctx, reps=reps)
        _row("episodic", f"lookup {batch} (all hits)", t, items=batch)
    except Exception as e:  # noqa: BLE001
        _failed("episodic", "episodic", e)


def print_table(copy_gbs: float | None, mm_tflops: float | None, device: str):
    print(f"\nbench_holo on {device}; HBM copy {copy_gbs or float('nan'):.0f} GB/s, bf16 matmul {mm_tflops or float('nan'):.1f} TFLOP/s")
    print(f"{'group':9s} {'variant':48s} {'ms':>9s} {'rate':>12s} {'unit':12s} {'GB/s':>7s} {'%copy':>6s} {'TFLOP/s':>8s} {'err':>8s}")
    einsum_ms = {g: r["ms"] for r in ROWS for g in ("product",) if r.get("name", "").startswith("jnp einsum") and "ms" in r}
    for r in ROWS:
        if "failed" in r:
            print(f"{r['group']:9s} {r['name']:48s} FAILED {r['failed']}")
            continue
        gbs = r.get("gbs")
        pct = f"{100 * gbs / copy_gbs:6.0f}" if gbs and copy_gbs and r["group"] != "hbm" else "     -"
        rate = f"{r['rate']:12.3e}" if "rate" in r else " " * 12
        tf = f"{r['tflops']:8.2f}" if "tflops" in r else "       -"
        err = f"{r['err']:8.1e}" if r.get("err") is not None else "       -"
        gb = f"{gbs:7.0f}" if gbs else "      -"
        print(f"{r['group']:9s} {r['name']:48s} {r['ms']:9.3f} {rate} {r.get('unit', ''):12s} {gb} {pct} {tf} {err} {r['note']}")
    base = einsum_ms.get("product")
    if base:
        for r in ROWS:
            if r.get("group") == "product" and r.get("name", "").startswith("pallas") and "ms" in r:
                print(f"speed-up of {r['name']} over the jnp einsum: {base / r['ms']:.2f}x")


def main(argv=None):
    global _VERBOSE
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU sizes; Pallas kernels in interpret mode")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--n", type=int, default=1 << 24, help="products per call")
    p.add_argument("--configs", default="256:4,512:4,1024:4,1024:8,2048:8", help="Pallas block:num_warps list")
    p.add_argument("--chain-configs", default="128:4,256:4,512:4,512:8")
    p.add_argument("--retrieve-batch", type=int, default=1 << 14, help="retrieve batch (scores are batch x score-vocab floats)")
    p.add_argument("--batch", type=int, default=1 << 20, help="patterns per store/retrieve call")
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024, help="token vocabulary of the store benchmark")
    p.add_argument("--score-vocab", type=int, default=50_000, help="vocabulary scored at retrieval")
    p.add_argument("--cache-slots", type=int, default=1 << 22)
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failed variants")
    args = p.parse_args(argv)
    _VERBOSE = args.verbose
    interpret = jax.default_backend() != "gpu"
    if args.small:
        args.reps, args.n, args.batch, args.retrieve_batch = 3, 1 << 12, 1 << 11, 1 << 11
        args.levels, args.score_vocab, args.cache_slots = 2, 2048, 1 << 13
        args.configs, args.chain_configs = "256:4", "128:4"
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})" + (", Pallas interpret mode" if interpret else "")
    copy_gbs = mm = None
    try:
        copy_gbs = bench_copy(args.n * 16 if not args.small else 1 << 20, args.reps)
    except Exception as e:  # noqa: BLE001
        _failed("hbm", "copy", e)
    try:
        mm = bench_matmul(8192 if not args.small else 256, max(args.reps // 5, 2))
    except Exception as e:  # noqa: BLE001
        _failed("matmul", "bf16", e)
    parse = lambda text: [tuple(int(v) for v in item.split(":")) for item in text.split(",")]  # noqa: E731
    bench_product(args.n, args.reps, interpret, parse(args.configs))
    bench_chain(args.n // 4, 4, 259, args.reps, interpret, parse(args.chain_configs))
    bench_memory(args.batch, args.vocab, args.levels, args.cache_slots, args.reps, args.score_vocab, args.retrieve_batch)
    print_table(copy_gbs, mm, device)


if __name__ == "__main__":
    main()
