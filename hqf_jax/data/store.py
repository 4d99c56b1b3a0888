"""The byte store: documents built once into memory-mapped uint8 files, read without loading them.

A store is a folder::

    manifest.json        what was built from what (the key), the description, counts, the split rule
    train.bin, valid.bin the split's documents concatenated, raw uint8 (np.memmap, read-only)
    train.offsets, ...   int64 start of every document in its .bin, then its end (memmapped)
    train.names.json     run-length document names: [[name, count], ...] (a name with count > 1 is
                         a file of several documents, e.g. the rows of a parquet file: "name#j")

``build`` writes a store from any iterable of documents whose bytes come in chunks, so nothing
proportional to the corpus sits in RAM (a document may be larger than RAM too); it shows a progress
bar on a terminal and plain lines when piped. The store is reused while its key (the source, its
settings and every input file's path, size and mtime) is unchanged, and rebuilt otherwise.
Building goes to a temporary folder renamed into place, so concurrent builders (several processes
of one run) never see half a store.

The split is by document name (``corpus.is_valid_name``): a file goes to validation as a whole.
When that puts every document on one side, the last ``valid_fraction`` of the bytes (documents in
name order) becomes validation, as ``corpus.split_documents`` does in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from hqf_jax.data.corpus import is_valid_name
from hqf_jax.errors import DataError

VERSION = 1
SPLITS = ("train", "valid")
ENV_DIR = "HQF_DATA_STORE"  # default folder of stores when data.store_dir is empty
DEFAULT_DIR = "~/.cache/hqf_jax/byte_store"
CHUNK = 1 << 24  # bytes per read while building


def store_root(store_dir: str = "") -> Path:
    """The folder that holds the stores: ``data.store_dir``, else $HQF_DATA_STORE, else ~/.cache/hqf_jax/byte_store."""
    return Path(os.path.expanduser(store_dir or os.environ.get(ENV_DIR) or DEFAULT_DIR))


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------------ reading


def _memmap(path: Path, dtype, count: int) -> np.ndarray:
    if count == 0:  # mmap cannot map an empty file
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


class FileBytes:
    """A uint8 file read with ``os.pread``: ``len`` and slices, like an array, but nothing of the file is
    mapped into the process. The sampler reads its windows this way: a memmap maps whole (up to 2 MiB)
    page-cache folios on each fault, so its RSS grows toward the corpus size and a batch costs ~5x more
    (64 windows of 4 KiB: 2.9 ms mapped, 0.6 ms with pread, tests/test_byte_store.py's corpus)."""

    dtype = np.dtype(np.uint8)

    def __init__(self, path: str | Path, size: int):
        self.path, self.size = str(path), int(size)
        self._fd: int | None = os.open(self.path, os.O_RDONLY) if self.size else None  # held: a rebuild cannot swap it

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("FileBytes takes contiguous slices only; use ByteStore.stream(split) for an array")
        a, b, _ = key.indices(self.size)
        n = max(b - a, 0)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        out = np.empty(n, np.uint8)
        got = os.preadv(self._fd, [out], a) if n else 0
        if got != n:
            raise DataError(f"{self.path} is shorter than its store says; delete {Path(self.path).parent} to rebuild it")
        return out

    def __getstate__(self):  # picklable: the descriptor is reopened on first use
        return {"path": self.path, "size": self.size, "_fd": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


class DocList(Sequence):
    """The (name, bytes) documents of one split, read from the store on access."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, names: list):
        self._data, self._offsets = data, offsets
        self._names = names  # run-length [[name, count], ...]
        self._first = np.cumsum([0] + [c for _, c in names])  # index of the first document of each name

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def name(self, i: int) -> str:
        k = int(np.searchsorted(self._first, i, side="right")) - 1
        name, count = self._names[k]
        return name if count == 1 else f"{name}#{i - int(self._first[k])}"

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        return self.name(i), self._data[a:b].tobytes()

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return (self[i] for i in range(len(self)))

    def __add__(self, other) -> list:
        return list(self) + list(other)

    def __radd__(self, other) -> list:
        return list(other) + list(self)


class ByteStore:
    """A built store; the same interface as ``ByteCorpus`` (train, valid, stream, summary)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / "manifest.json"
        if not path.exists():
            raise DataError(f"{self.folder} is not a byte store (no manifest.json); delete it and build again")
        self.manifest = json.loads(path.read_text())
        self.description = self.manifest["description"]
        self.skipped = int(self.manifest["skipped"])
        self._docs: dict[str, DocList] = {}

    def stream(self, split: str) -> np.ndarray:
        """All documents of a split concatenated, in name order: a read-only uint8 memmap."""
        return _memmap(self.folder / f"{split}.bin", np.uint8, self.manifest["splits"][split]["bytes"])

    def reader(self, split: str) -> FileBytes:
        """The split for the window sampler: read with pread, nothing mapped (see ``FileBytes``)."""
        return FileBytes(self.folder / f"{split}.bin", self.manifest["splits"][split]["bytes"])

    def docs(self, split: str) -> DocList:
        if split not in self._docs:
            n = self.manifest["splits"][split]["docs"]
            names = json.loads((self.folder / f"{split}.names.json").read_text())
            self._docs[split] = DocList(self.stream(split), _memmap(self.folder / f"{split}.offsets", np.int64, n + 1), names)
        return self._docs[split]

    @property
    def train(self) -> DocList:
        return self.docs("train")

    @property
    def valid(self) -> DocList:
        return self.docs("valid")

    def summary(self) -> str:
        s = self.manifest["splits"]
        out = (f"{self.description}: {s['train']['docs']} train docs ({s['train']['bytes']:,} bytes), "
               f"{s['valid']['docs']} valid docs ({s['valid']['bytes']:,} bytes)")
        return out + (f", {self.skipped} skipped" if self.skipped else "") + f"; store {self.folder}"


# ----------------------------------------------------------------------------------------- building


class Progress:
    """Bytes done of a total: a tqdm bar on a terminal, a plain line every 10% (and at most every 5 s) when piped."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total, self.desc, self.done, self.enabled = max(int(total), 1), desc, 0, enabled
        self.bar = None
        self._last_pct, self._last_t = 0, time.monotonic()
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit="B", unit_scale=True, dynamic_ncols=True, leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            pct = 100 * self.done // self.total
            if pct >= self._last_pct + 10 and time.monotonic() - self._last_t >= 5:
                print(f"[data] {self.desc}: {min(pct, 100)}% ({self.done:,} of {self.total:,} bytes)", flush=True)
                self._last_pct, self._last_t = pct, time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _SplitWriter:
    def __init__(self, folder: Path, split: str):
        self.bin = open(folder / f"{split}.bin", "wb")
        self.offsets = open(folder / f"{split}.offsets", "wb")
        self.names: list[list] = []
        self.size = self.docs = 0

    def add(self, name: str, chunks: Iterable[bytes], progress: Progress | None) -> bool:
        """Append one document; False (and nothing written) when it is empty or its chunks raise OSError."""
        start = self.size
        try:
            for c in chunks:
                if c:
                    self.bin.write(c)
                    self.size += len(c)
                    if progress is not None:
                        progress.update(len(c))
        except OSError:
            self.bin.seek(start)
            self.bin.truncate()
            self.size = start
            return False
        if self.size == start:
            return False
        self.offsets.write(np.int64(start).tobytes())
        self.docs += 1
        if self.names and self.names[-1][0] == name:
            self.names[-1][1] += 1
        else:
            self.names.append([name, 1])
        return True

    def close(self, folder: Path, split: str) -> None:
        self.offsets.write(np.int64(self.size).tobytes())
        self.bin.close()
        self.offsets.close()
        (folder / f"{split}.names.json").write_text(json.dumps(self.names))


def _write_part(folder: Path, split: str, src: Path, lo: int, hi: int) -> None:
    """A split of one document, bytes [lo, hi) of ``src`` (the all-on-one-side fallback)."""
    with open(src, "rb") as f, open(folder / f"{split}.bin.new", "wb") as out:
        f.seek(lo)
        left = hi - lo
        while left > 0:
            buf = f.read(min(CHUNK, left))
            out.write(buf)
            left -= len(buf)
    (folder / f"{split}.offsets").write_bytes(np.array([0, hi - lo] if hi > lo else [0], np.int64).tobytes())
    (folder / f"{split}.names.json").write_text(json.dumps([[f"{split}-part", 1]] if hi > lo else []))


def _key_of(folder: Path) -> str | None:
    try:
        return json.loads((folder / "manifest.json").read_text()).get("key")
    except (OSError, ValueError):
        return None


def build(folder: Path, key: str, docs: Iterable[tuple[str, str, Iterable[bytes]]], total_bytes: int,
          valid_fraction: float, description: str, skipped: int = 0, progress: bool = True,
          label: str = "build byte store") -> ByteStore:
    """The store at ``folder`` for ``key``: reused when it holds that key, else built from ``docs``.

    ``docs`` yields (name, split, chunks) in name order; a document whose chunks raise OSError, or
    that is empty, is skipped and counted. ``total_bytes`` sizes the progress bar.
    """
    folder = Path(folder)
    if _key_of(folder) == key:
        return ByteStore(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        writers = {s: _SplitWriter(tmp, s) for s in SPLITS}
        bar = Progress(total_bytes, f"{label} {folder.name}", progress)
        seen, t0 = 0, time.monotonic()
        for name, split, chunks in docs:
            seen += 1
            if not writers[split].add(name, chunks, bar):
                skipped += 1
        bar.close()
        for s, w in writers.items():
            w.close(tmp, s)
        sizes = {s: {"bytes": w.size, "docs": w.docs} for s, w in writers.items()}
        if not sizes["train"]["docs"] and not sizes["valid"]["docs"]:
            raise DataError(f"every one of the {seen} documents of {description} is empty or unreadable; "
                            "check their permissions or point data.paths elsewhere")
        if not sizes["train"]["docs"] or not sizes["valid"]["docs"]:  # all on one side: cut by bytes
            side = "train" if sizes["train"]["docs"] else "valid"
            total = sizes[side]["bytes"]
            cut = int(total * (1 - valid_fraction))
            _write_part(tmp, "train", tmp / f"{side}.bin", 0, cut)
            _write_part(tmp, "valid", tmp / f"{side}.bin", cut, total)
            for s in SPLITS:
                os.replace(tmp / f"{s}.bin.new", tmp / f"{s}.bin")
            sizes = {"train": {"bytes": cut, "docs": int(cut > 0)}, "valid": {"bytes": total - cut, "docs": int(total > cut)}}
        print(f"[data] built {folder} ({sizes['train']['bytes'] + sizes['valid']['bytes']:,} bytes) "
              f"in {time.monotonic() - t0:.1f} s", flush=True)
        if skipped:
            print(f"[data] skipped {skipped} empty or unreadable documents of {seen}")
        (tmp / "manifest.json").write_text(json.dumps(dict(
            version=VERSION, key=key, description=description, skipped=skipped, valid_fraction=valid_fraction,
            splits=sizes, built=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())), indent=1))
        if _key_of(folder) == key:  # another process of the run put the same store in place first
            return ByteStore(folder)
        if folder.exists():  # a stale store (its inputs changed): open files stay readable after removal
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process put it in place in between
            if _key_of(folder) != key:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ByteStore(folder)


# ----------------------------------------------------------------------------------------- files


def read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while True:
            buf = f.read(CHUNK)
            if not buf:
                return
            yield buf


def file_entries(files: list[tuple[Path, str]]) -> tuple[list[tuple[Path, str, int, int]], int]:
    """(path, name, size, mtime_ns) in name order, and how many files could not be stat'ed."""
    out, bad = [], 0
    for path, name in files:
        try:
            st = path.stat()
        except OSError:
            bad += 1
            continue
        out.append((path, name, st.st_size, st.st_mtime_ns))
    out.sort(key=lambda e: (e[1], str(e[0])))
    return out, bad


def files_store(files: list[tuple[Path, str]], valid_fraction: float, description: str, root: Path, ident: dict,
                doc_chunks: Callable[[Path], Iterable[bytes]] | None = None, progress: bool = True) -> ByteStore:
    """The store of local files (one document per file, split by name), keyed on paths, sizes and mtimes.

    ``ident`` names the store (source and settings, not the file stats): one folder per ident under
    ``root``, rebuilt in place when a file changes.
    """
    entries, bad = file_entries(files)
    ident = dict(ident, version=VERSION, valid_fraction=valid_fraction)
    key = digest([ident, [(str(p), n, s, m) for p, n, s, m in entries]])
    folder = root / f"{ident.get('source', 'files')}-{digest(ident)[:16]}"
    doc_chunks = doc_chunks or read_chunks
    docs = ((name, "valid" if is_valid_name(name, valid_fraction) else "train", doc_chunks(path))
            for path, name, _s, _m in entries)
    return build(folder, key, docs, sum(e[2] for e in entries), valid_fraction, description, bad, progress)
