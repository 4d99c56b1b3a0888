"""Byte sources on disk, built into the memory-mapped byte store (hqf_jax.data.store).

``files``: any local files or folders, one document per file, numpy only. ``stdlib``: the .py
sources of the running interpreter's standard library, the default corpus every machine has.
``hf``: HF-style local data (parquet, jsonl/json, arrow, csv) with a text column, one document per
row, read through ``datasets`` in streaming mode with a temporary cache (nothing is written to the
user's HF cache); ``datasets`` is imported only for this source.

The split is by file: a file goes to validation when the first 8 bytes of sha256(name) fall below
``valid_fraction`` of 2^64, where the name is its path relative to the folder it was found under,
so adding files never moves another file across the split and a moved corpus splits alike.
"""

from __future__ import annotations

import os
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from hqf_jax.data import store
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


def load_files(paths: list[str] | str, valid_fraction: float = 0.05, suffixes: tuple[str, ...] | None = None,
               store_dir: str = "", progress: bool = True) -> store.ByteStore:
    """Bytes of any local files or folders (any file type), as a byte store."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    files = _list_files(paths, suffixes)
    ident = dict(source="files", paths=[str(Path(os.path.expanduser(p)).resolve()) for p in paths],
                 suffixes=list(suffixes) if suffixes else None)
    return store.files_store(files, valid_fraction, f"files {paths}", store.store_root(store_dir), ident, progress=progress)


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def load_stdlib(valid_fraction: float = 0.05, max_files: int | None = None, store_dir: str = "",
                progress: bool = True) -> store.ByteStore:
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
    named = [(f, os.path.relpath(f, root)) for f in files]
    ident = dict(source="stdlib", root=str(root), max_files=max_files or 0)
    return store.files_store(named, valid_fraction, f"python stdlib at {root}", store.store_root(store_dir), ident,
                             progress=progress)


# ------------------------------------------------------------------------------------ HF-format data

HF_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow", ".csv": "csv"}


def hf_format_of(path: Path, fmt: str = "") -> str:
    if fmt:
        if fmt not in set(HF_FORMATS.values()):
            raise DataError(f"data.hf_format={fmt!r}: use one of {sorted(set(HF_FORMATS.values()))} (or empty to go by suffix)")
        return fmt
    suffix = path.suffix.lower()
    if suffix not in HF_FORMATS:
        raise DataError(f"{path} has no known data suffix ({', '.join(HF_FORMATS)}); set data.hf_format")
    return HF_FORMATS[suffix]


def hf_rows(path: Path, fmt: str, column: str) -> Iterator[bytes]:
    """The text column of every row of one local data file, utf-8, streamed (a temporary cache dir,
    removed afterwards, so the user's HF cache stays untouched)."""
    try:
        import datasets
    except ImportError as e:
        raise DataError("data.source=hf needs the datasets package (pip install datasets); "
                        "plain files need only numpy: data.source=files") from e
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="hqf_hf_cache_") as cache:
        ds = datasets.load_dataset(fmt, data_files=[str(path)], split="train", streaming=True, cache_dir=cache)
        for row in ds:
            if column not in row:
                raise DataError(f"{path} has no column {column!r}; its columns are {sorted(row)}: set data.text_column")
            text = row[column]
            if text is None:
                continue
            yield text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)


def load_hf(paths: list[str] | str, valid_fraction: float = 0.05, column: str = "text", fmt: str = "",
            store_dir: str = "", progress: bool = True) -> store.ByteStore:
    """HF-style local data files (or folders of them) as a byte store: one document per row's text,
    split by file as every other source."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    suffixes = None if fmt else tuple(HF_FORMATS)
    files = _list_files(paths, suffixes)
    entries, bad = store.file_entries(files)
    ident = dict(source="hf", paths=[str(Path(os.path.expanduser(p)).resolve()) for p in paths], column=column,
                 format=fmt, version=store.VERSION, valid_fraction=valid_fraction)
    key = store.digest([ident, [(str(p), n, s, m) for p, n, s, m in entries]])
    folder = store.store_root(store_dir) / f"hf-{store.digest(ident)[:16]}"
    bar_total = sum(e[2] for e in entries)

    def docs():
        for path, name, _size, _mtime in entries:
            split = "valid" if is_valid_name(name, valid_fraction) else "train"
            for text in hf_rows(path, hf_format_of(path, fmt), column):
                yield name, split, (text,)

    return store.build(folder, key, docs(), bar_total, valid_fraction, f"hf {fmt or 'data'} {paths} column {column!r}",
                       bad, progress)


def _paths(cfg) -> list[str]:
    if not cfg.get("paths"):
        raise DataError(f"data.source={cfg.source} needs data.paths (a file or folder, or several separated by commas)")
    return [p for p in cfg.paths.split(",") if p] if isinstance(cfg.paths, str) else list(cfg.paths)


@register("stdlib")
def _stdlib_source(cfg) -> store.ByteStore:
    return load_stdlib(cfg.valid_fraction, cfg.get("max_files") or None, cfg.get("store_dir", ""))


@register("files")
def _files_source(cfg) -> store.ByteStore:
    return load_files(_paths(cfg), cfg.valid_fraction, store_dir=cfg.get("store_dir", ""))


@register("hf")
def _hf_source(cfg) -> store.ByteStore:
    return load_hf(_paths(cfg), cfg.valid_fraction, cfg.get("text_column", "text"), cfg.get("hf_format", ""),
                   cfg.get("store_dir", ""))
