"""Byte sources: documents (name, bytes) from local files, split into train/validation by document.

Every source returns a ``ByteCorpus``. Files are read through ``datasets`` (an Arrow table
of (name, data) rows, memory-mapped from its cache, so large corpora do not sit in RAM
twice). The split is a deterministic function of each document's name: a document goes
to validation when the first 8 bytes of sha256(name) fall below ``valid_fraction`` of 2^64,
so adding files never moves another file across the split.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import numpy as np

from hqf_jax.data.corpus import ByteCorpus, is_valid_name, split_documents  # noqa: F401
from hqf_jax.data.registry import register
from hqf_jax.errors import DataError


def _list_files(paths: list[str], suffixes: tuple[str, ...] | None) -> list[tuple[Path, str]]:
    """(file, name) of the files under the paths. The name, the key of the split, is the file's path
    relative to the folder it was found under (a file given directly: its base name), so a moved
    corpus splits alike."""
    files: list[tuple[Path, str]] = []
    for p in paths:
        path = Path(os.path.expanduser(p))
        if not path.exists():
            raise DataError(f"data path {p!r} does not exist; pass an existing file or folder (data.paths=/path/to/text)")
        if path.is_file():
            files.append((path, path.name))
        else:
            files.extend((f, f.relative_to(path).as_posix()) for f in sorted(path.rglob("*"))
                         if f.is_file() and (suffixes is None or f.suffix in suffixes))
    if not files:
        raise DataError(f"no files found under {paths}" + (f" with suffixes {suffixes}" if suffixes else "")
                        + "; point data.paths at a folder that holds files")
    return files


def _read_through_datasets(files: list[Path]) -> tuple[list[tuple[str, bytes]], int]:
    """(name, bytes) of every non-empty readable file, via a datasets Arrow table. The table's cache
    fingerprint includes each file's size and mtime, so an edited file is never served stale."""
    import datasets

    datasets.disable_progress_bars()

    def gen(entries):
        for path, _size, _mtime in entries:
            try:
                data = Path(path).read_bytes()
            except OSError:
                continue
            if data:
                yield {"name": path, "data": data}

    entries = []
    for f in files:
        st = f.stat()
        entries.append((str(f), st.st_size, st.st_mtime_ns))
    features = datasets.Features({"name": datasets.Value("string"), "data": datasets.Value("binary")})
    try:
        ds = datasets.Dataset.from_generator(gen, gen_kwargs={"entries": entries}, features=features, keep_in_memory=True)
        docs = [(row["name"], row["data"]) for row in ds]
    except ValueError:  # datasets refuses a generator that yields no rows
        docs = []
    skipped = len(files) - len(docs)
    if not docs:
        raise DataError(f"every one of the {len(files)} files under the data paths is empty or unreadable; "
                        "check their permissions or point data.paths elsewhere")
    if skipped:
        print(f"[data] skipped {skipped} empty or unreadable files of {len(files)}")
    return docs, skipped


def load_files(paths: list[str] | str, valid_fraction: float = 0.05, suffixes: tuple[str, ...] | None = None) -> ByteCorpus:
    """Bytes of any local files or folders (any file type)."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    files = _list_files(paths, suffixes)
    names = {str(f): name for f, name in files}
    docs, skipped = _read_through_datasets([f for f, _ in files])
    docs = [(names[n], d) for n, d in docs]
    return split_documents(docs, valid_fraction, f"files {paths}", skipped)


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def load_stdlib(valid_fraction: float = 0.05, max_files: int | None = None) -> ByteCorpus:
    """The embedded default corpus: the .py sources of the running interpreter's standard library
    (test suites and site-packages left out), so every machine has the same kind of real text."""
    root = Path(stdlib_root())
    files = [f for f in sorted(root.rglob("*.py"))
             if "site-packages" not in f.parts and "test" not in f.parts and "tests" not in f.parts and "idlelib" not in f.parts]
    if not files:
        raise DataError(f"no .py files under the standard library folder {root}; pass data.source=files data.paths=...")
    if max_files:
        rng = np.random.default_rng(0)
        files = sorted(rng.choice(np.array(files, dtype=object), size=min(max_files, len(files)), replace=False).tolist())
    docs, skipped = _read_through_datasets(files)
    docs = [(os.path.relpath(n, root), d) for n, d in docs]
    return split_documents(docs, valid_fraction, f"python stdlib at {root}", skipped)


@register("stdlib")
def _stdlib_source(cfg) -> ByteCorpus:
    return load_stdlib(cfg.valid_fraction, cfg.get("max_files") or None)


@register("files")
def _files_source(cfg) -> ByteCorpus:
    if not cfg.get("paths"):
        raise DataError("data.source=files needs data.paths (a file or folder, or several separated by commas)")
    paths = cfg.paths.split(",") if isinstance(cfg.paths, str) else list(cfg.paths)
    return load_files(paths, cfg.valid_fraction)
