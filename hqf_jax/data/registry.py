"""The data-source registry: a name -> loader(data config) dict and its lookup.

Source modules register their loaders here with ``@register("name")``; this module imports none of
them. The registry is filled by one explicit import list, ``hqf_jax.data.catalog``, which is what
callers import to load a corpus (``catalog.load_corpus``).
"""

from __future__ import annotations

from typing import Callable

from hqf_jax.errors import DataError

# name -> loader(data_config) -> a corpus (ByteCorpus or ByteStore)
SOURCES: dict[str, Callable] = {}


def register(name: str):
    """Decorator: add ``fn`` as the loader of ``data.source=name``."""

    def deco(fn):
        if name in SOURCES and SOURCES[name] is not fn:
            raise ValueError(f"data source {name!r} is registered twice ({SOURCES[name].__module__} and {fn.__module__})")
        SOURCES[name] = fn
        return fn

    return deco


def get(name: str, key: str = "data.source") -> Callable:
    """The loader registered as ``name``; an unknown name lists the valid ones."""
    if name not in SOURCES:
        raise DataError(f"unknown {key} {name!r}; valid sources: {sorted(SOURCES)}")
    return SOURCES[name]
