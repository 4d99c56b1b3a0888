"""Cost of the byte store's sampler per batch, against random bytes, beside the same sampler over the
same bytes in RAM (the pipeline before the store). Compare ms per batch with a training step's time
(bench.lm) to check that reading batches costs under 2% of the step.

    python -m bench.data [--mb 1024] [--batch-size 32] [--seq-len 2048] [--steps 200] [--store-dir DIR]
    python -m bench.data --small        # 8 MiB, batch 8 x 256, runs in seconds on a CPU

The corpus is random bytes written as files (so the split and the store are the real ones) and
built once into ``--store-dir`` (default: a temporary folder, removed afterwards). Nothing drops the
page cache, so on a machine with RAM to spare the reads are warm (just built); a corpus larger than
RAM reads from disk. Each row times inputs and targets as int32, as the trainer receives them.
Numbers go to stdout and ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from hqf_jax.data.batching import WindowSampler
from hqf_jax.data.sources import load_files


def time_batches(sampler: WindowSampler, steps: int) -> float:
    """Mean seconds per batch (inputs and targets as int32, as the trainer receives them)."""
    sampler(0)
    t = time.perf_counter()
    for step in range(1, steps + 1):
        sampler(step)
    return (time.perf_counter() - t) / steps


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=1024, help="corpus size in MiB of random bytes")
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--store-dir", default="", help="where the store is built (default: a temporary folder)")
    p.add_argument("--small", action="store_true", help="8 MiB, batch 8 x 256, 50 steps")
    p.add_argument("--out", default="", help="also write the results as JSON here")
    a = p.parse_args(argv)
    if a.small:
        a.mb, a.files, a.batch_size, a.seq_len, a.steps = 8, 4, 8, 256, 50

    with tempfile.TemporaryDirectory(prefix="hqf_bench_data_") as tmp:
        data = Path(tmp) / "corpus"
        data.mkdir()
        rng = np.random.default_rng(0)
        per = (a.mb << 20) // a.files
        for i in range(a.files):
            with open(data / f"part{i:03d}.bin", "wb") as f:
                for lo in range(0, per, 16 << 20):
                    f.write(rng.bytes(min(16 << 20, per - lo)))
        t = time.perf_counter()
        store = load_files(str(data), 0.05, store_dir=a.store_dir or str(Path(tmp) / "stores"))
        build_s = time.perf_counter() - t
        disk = WindowSampler(store.reader("train"), a.seq_len, a.batch_size, seed=0)
        disk_s = time_batches(disk, a.steps)
        half = WindowSampler(store.reader("train"), a.seq_len, a.batch_size, seed=0)
        half.read_only_rows(np.arange(a.batch_size // 2))
        half_s = time_batches(half, a.steps)
        ram = WindowSampler(np.array(store.stream("train")), a.seq_len, a.batch_size, seed=0)
        ram_s = time_batches(ram, a.steps)

    r = dict(corpus_mib=a.mb, train_bytes=len(disk.stream), build_s=build_s, batch_size=a.batch_size, seq_len=a.seq_len,
             batch_bytes=a.batch_size * a.seq_len, steps=a.steps, ms_per_batch=disk_s * 1e3,
             ms_per_batch_half_rows=half_s * 1e3, ms_per_batch_in_ram=ram_s * 1e3)
    print(f"store of {a.mb} MiB random bytes built in {build_s:.1f} s; batch {a.batch_size} x {a.seq_len}, {a.steps} steps")
    print("| sampler | ms per batch | MB/s |")
    print("|---|---|---|")
    for name, s in (("store (pread)", disk_s), ("store, half the rows (2 processes)", half_s), ("same bytes in RAM", ram_s)):
        rows = a.batch_size // 2 if "half" in name else a.batch_size
        print(f"| {name} | {s * 1e3:.3f} | {rows * a.seq_len / s / 1e6:.0f} |")
    if a.out:
        Path(a.out).write_text(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
