"""The research paths' byte sources, registered with ``hqf_jax.data.sources`` on import:
``music`` (ABC tunes from music21's corpus), ``digits`` (sklearn digits as header + PGM) and
``zip`` (zlib / LZ77 streams of a text corpus)."""

from hqf_jax.data import digits, music, zipspace  # noqa: F401  (each module registers its source)
