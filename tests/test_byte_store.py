"""The byte store: windows read from the memmap equal slices of the concatenated documents, batches are a
pure function of the step, the store is reused until a file changes, processes split the global batch,
a corpus several times a memory cap builds and samples under that cap, and the HF cache stays untouched."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hqf_jax.data import store
from hqf_jax.data.batching import WindowSampler, eval_windows, to_example
from hqf_jax.data.corpus import is_valid_name, split_documents
from hqf_jax.data.sources import load_files
from hqf_jax.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _corpus(folder: Path, n: int = 40, seed: int = 0) -> dict[str, bytes]:
    """n files of random sizes (two empty) in a nested folder; name (relative path) -> bytes."""
    rng = np.random.default_rng(seed)
    docs = {}
    for i in range(n):
        name = f"d{i % 3}/f{i:03d}.txt"
        data = b"" if i in (5, 17) else rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        docs[name] = data
    return docs


def _expected(docs: dict[str, bytes], valid_fraction: float):
    """The in-memory split of the same documents (the rule the store keeps)."""
    return split_documents([(n, d) for n, d in docs.items() if d], valid_fraction)


def test_store_matches_in_memory_split_and_windows_are_slices(tmp_path):
    docs = _corpus(tmp_path / "data")
    s = load_files(str(tmp_path / "data"), 0.2, store_dir=str(tmp_path / "stores"), progress=False)
    ref = _expected(docs, 0.2)
    assert s.skipped == 2  # the two empty files, counted
    for split in ("train", "valid"):
        assert isinstance(s.stream(split), np.memmap)
        np.testing.assert_array_equal(np.asarray(s.stream(split)), ref.stream(split))
        assert list(getattr(s, split)) == getattr(ref, split)  # names and bytes, in name order
    assert {n for n, _ in s.valid} == {n for n, d in docs.items() if d and is_valid_name(n, 0.2)}
    # the sampler's windows are slices of the concatenated training documents
    cat = b"".join(d for _, d in ref.train)
    sampler = WindowSampler(s.stream("train"), 64, 8, seed=3)
    for step in (0, 1, 99):
        w = sampler.windows(step)
        for row, start in zip(w, sampler.starts(step)):
            assert row.tobytes() == cat[start:start + 64]
        np.testing.assert_array_equal(sampler(step)["targets"], to_example(w)["targets"])
        # the pread reader the tasks sample from gives the same batch as the memmap
        np.testing.assert_array_equal(WindowSampler(s.reader("train"), 64, 8, seed=3)(step)["inputs"], sampler(step)["inputs"])
    ev = eval_windows(s.stream("valid"), 32, 1024)
    np.testing.assert_array_equal(eval_windows(s.reader("valid"), 32, 1024), ev)
    starts = np.linspace(0, len(s.stream("valid")) // 32 - 1, len(ev)).round().astype(int) * 32
    assert [r.tobytes() for r in ev] == [ref.stream("valid")[a:a + 32].tobytes() for a in starts]


def test_all_on_one_side_cuts_by_bytes_like_the_in_memory_rule(tmp_path):
    (tmp_path / "one.txt").write_bytes(bytes(range(256)) * 10)
    for vf in (0.1, 1.0):
        s = load_files(str(tmp_path / "one.txt"), vf, store_dir=str(tmp_path / "stores"), progress=False)
        ref = split_documents([("one.txt", bytes(range(256)) * 10)], vf)
        for split in ("train", "valid"):
            assert list(getattr(s, split)) == [d for d in getattr(ref, split) if d[1]]
            np.testing.assert_array_equal(np.asarray(s.stream(split)), ref.stream(split))


def test_batches_are_a_pure_function_of_the_step(tmp_path):
    _corpus(tmp_path / "data")
    kw = dict(store_dir=str(tmp_path / "stores"), progress=False)
    a = WindowSampler(load_files(str(tmp_path / "data"), 0.2, **kw).stream("train"), 48, 6, seed=7)
    b = WindowSampler(load_files(str(tmp_path / "data"), 0.2, **kw).stream("train"), 48, 6, seed=7)  # a "resumed" run
    for step in (0, 5, 1234):
        for k in ("inputs", "targets"):
            np.testing.assert_array_equal(a(step)[k], b(step)[k])
    # the same windows as fancy indexing of the whole stream in RAM (the sampler before the store)
    ram = np.asarray(a.stream)
    idx = a.starts(5)[:, None] + np.arange(48)[None, :]
    np.testing.assert_array_equal(a.windows(5), ram[idx])
    assert not np.array_equal(a(0)["targets"], a(1)["targets"])


def test_reused_while_files_are_unchanged_rebuilt_when_one_changes(tmp_path):
    docs = _corpus(tmp_path / "data", n=12)
    kw = dict(store_dir=str(tmp_path / "stores"), progress=False)
    s1 = load_files(str(tmp_path / "data"), 0.2, **kw)
    built = s1.manifest["built"], (s1.folder / "train.bin").stat().st_mtime_ns
    s2 = load_files(str(tmp_path / "data"), 0.2, **kw)
    assert s2.folder == s1.folder and (s2.manifest["built"], (s2.folder / "train.bin").stat().st_mtime_ns) == built
    # edit one file (same size, new content and mtime): rebuilt in the same folder, new bytes served
    name = next(n for n, d in docs.items() if d and not is_valid_name(n, 0.2))
    new = bytes(255 - b for b in docs[name])
    (tmp_path / "data" / name).write_bytes(new)
    st = (tmp_path / "data" / name).stat()
    os.utime(tmp_path / "data" / name, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    s3 = load_files(str(tmp_path / "data"), 0.2, **kw)
    assert s3.folder == s1.folder and s3.manifest["key"] != s1.manifest["key"]
    assert dict(s3.train)[name] == new
    # a new file: rebuilt again; another valid_fraction: another store beside it
    (tmp_path / "data" / "extra.txt").write_bytes(b"extra bytes")
    s4 = load_files(str(tmp_path / "data"), 0.2, **kw)
    assert s4.manifest["key"] != s3.manifest["key"] and s4.manifest["splits"]["train"]["docs"] + s4.manifest["splits"]["valid"]["docs"] == 12  # 11 non-empty + extra
    assert load_files(str(tmp_path / "data"), 0.5, **kw).folder != s1.folder
    assert not [p for p in Path(kw["store_dir"]).iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_processes_split_the_global_batch_exactly(tmp_path):
    _corpus(tmp_path / "data")
    stream = load_files(str(tmp_path / "data"), 0.2, store_dir=str(tmp_path / "stores"), progress=False).stream("train")
    full = WindowSampler(stream, 32, 8, seed=1)
    # two processes holding row blocks {0, 2} and {1, 3} of four (an fsdp-major mesh), as trainer.sharding.local_rows gives
    parts = [np.array([0, 1, 4, 5]), np.array([2, 3, 6, 7])]
    for step in (0, 3):
        merged = {k: np.zeros((8, 32), np.int32) for k in ("inputs", "targets")}
        for rows in parts:
            p = WindowSampler(stream, 32, 8, seed=1)
            p.read_only_rows(rows)
            batch = p(step)
            other = np.setdiff1d(np.arange(8), rows)
            for k in merged:
                assert batch[k].shape == (8, 32) and not batch[k][other].any()  # only its own rows read
                merged[k][rows] = batch[k][rows]
        for k in merged:
            np.testing.assert_array_equal(merged[k], full(step)[k])


_BUILD = textwrap.dedent("""
    import hashlib, sys
    from hqf_jax.data.sources import load_files
    s = load_files(sys.argv[1], 0.2, store_dir=sys.argv[2], progress=False)
    print(hashlib.sha256(s.reader("train")[0:len(s.reader("train"))].tobytes()).hexdigest(), s.folder)
""")


def test_processes_building_the_same_store_at_once_agree(tmp_path):
    _corpus(tmp_path / "data", n=200)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [sys.executable, "-c", _BUILD, str(tmp_path / "data"), str(tmp_path / "stores")]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    lines = {o.strip().splitlines()[-1] for o, _ in outs}
    assert len(lines) == 1
    assert [p.name for p in (tmp_path / "stores").iterdir()] == [Path(lines.pop().split()[1]).name]


def test_missing_path_and_unreadable_corpus_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_files(str(tmp_path / "nope"), store_dir=str(tmp_path / "stores"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty or unreadable"):
        load_files(str(tmp_path / "empty"), store_dir=str(tmp_path / "stores"), progress=False)


_CAPPED = textwrap.dedent("""
    import json, resource, sys
    cap = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))  # private memory; the read-only memmap is not counted
    import numpy as np
    from hqf_jax.data.batching import WindowSampler, eval_windows
    from hqf_jax.data.sources import load_files
    s = load_files(sys.argv[1], 0.25, store_dir=sys.argv[2], progress=False)
    sampler = WindowSampler(s.reader("train"), 4096, 64, seed=0)  # what lm_task samples from
    for step in range(50):
        b = sampler(step)
    ev = eval_windows(s.reader("valid"), 4096, 1 << 20)
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    print(json.dumps(dict(train=len(s.stream("train")), valid=len(s.stream("valid")), eval_rows=len(ev),
                          hwm_kib=int(status["VmHWM"].split()[0]), anon_kib=int(status["RssAnon"].split()[0]),
                          row0=sampler.windows(49)[0, :64].tolist(), start0=int(sampler.starts(49)[0]))))
""")


def test_a_corpus_four_times_a_memory_cap_builds_and_samples_under_it(tmp_path):
    cap, per_file, n_files = 128 << 20, 128 << 20, 4  # 512 MiB of training files under a 128 MiB cap
    data = tmp_path / "big"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_files):  # part0..3 fall on the training side of the split, part4 on the validation side
        with open(data / f"part{i}.bin", "wb") as f:
            for _ in range(per_file // (16 << 20)):
                f.write(rng.bytes(16 << 20))
    (data / "part4.bin").write_bytes(rng.bytes(1 << 20))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CAPPED, str(data), str(tmp_path / "stores"), str(cap)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"capped build+sample of {n_files * per_file >> 20} MiB: {time.perf_counter() - t:.1f} s, peak RSS {r['hwm_kib'] >> 10} MiB")
    assert r["train"] == n_files * per_file and r["valid"] == 1 << 20 and r["eval_rows"] == 256
    assert r["hwm_kib"] * 1024 < cap, f"peak RSS {r['hwm_kib']} KiB is over the {cap >> 20} MiB cap"
    # a window it read is the bytes of the training files (part0..3 in name order) at its offset
    start = r["start0"]
    k, off = divmod(start, per_file)
    with open(data / f"part{k}.bin", "rb") as f:
        f.seek(off)
        expect = f.read(64)
    if len(expect) < 64:
        expect += (data / f"part{k + 1}.bin").read_bytes()[:64 - len(expect)]
    assert bytes(r["row0"]) == expect


_HF = textwrap.dedent("""
    import json, sys
    from hqf_jax.data.catalog import load_corpus
    import ml_collections
    cfg = ml_collections.ConfigDict(dict(source="hf", paths=sys.argv[1], valid_fraction=0.5, text_column="text",
                                         hf_format="", store_dir=sys.argv[2]))
    s = load_corpus(cfg)
    print(json.dumps(dict(train=[[n, d.decode()] for n, d in s.train], valid=[[n, d.decode()] for n, d in s.valid])))
""")


def test_hf_source_streams_jsonl_and_parquet_into_the_store_and_leaves_the_hf_cache_alone(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("datasets")
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"text": f"document {i} " * (i % 7 + 1), "id": i} for i in range(60)]
    with open(data / "a.jsonl", "w") as f:
        for r in rows[:30]:
            f.write(json.dumps(r) + "\n")
    pq.write_table(pa.Table.from_pylist(rows[30:]), data / "b.parquet")
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HOME=str(hf_home), HF_DATASETS_CACHE=str(hf_home / "datasets"),
               HF_HUB_CACHE=str(hf_home / "hub"), XDG_CACHE_HOME=str(hf_home / "xdg"))
    out = subprocess.run([sys.executable, "-c", _HF, str(data), str(tmp_path / "stores")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(hf_home.rglob("*")) == [], "the HF cache was written to"
    # one document per row, split by file (a.jsonl trains, b.parquet is held out), each file's rows in order
    assert not is_valid_name("a.jsonl", 0.5) and is_valid_name("b.parquet", 0.5)
    assert got["train"] == [[f"a.jsonl#{i}", r["text"]] for i, r in enumerate(rows[:30])]
    assert got["valid"] == [[f"b.parquet#{i}", r["text"]] for i, r in enumerate(rows[30:])]


def test_bench_data_small_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.data", "--small", "--out", str(tmp_path / "r.json")],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["ms_per_batch"] > 0 and r["batch_bytes"] == r["batch_size"] * r["seq_len"]
    assert "ms per batch" in out.stdout
