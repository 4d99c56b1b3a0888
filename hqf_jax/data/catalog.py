"""Every data source, by one explicit import list, and ``load_corpus`` over them.

Each module below registers its sources with ``hqf_jax.data.registry`` when imported; none of them
imports this module, so the registry has no import circle. A new source is a module that calls
``registry.register`` and one line here.
"""

from __future__ import annotations

from hqf_jax.data import registry
# The one list of source modules (each registers its sources on import).
from hqf_jax.data import digits, music, sources, zipspace  # noqa: F401


def load_corpus(cfg):
    """Build the corpus a data config names (``cfg.source``, one of ``registry.SOURCES``)."""
    return registry.get(cfg.source)(cfg)
