"""Classical compressors as baselines: bits per byte of gzip -9, xz -9 (lzma preset 9e) and zlib."""

from __future__ import annotations

import gzip
import lzma
import zlib


def xz(data: bytes) -> bytes:
    """xz -9e: the strongest general-purpose baseline every evaluation prints."""
    return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)


def gzip_bpb(data: bytes) -> float:
    return 8.0 * len(gzip.compress(data, compresslevel=9, mtime=0)) / len(data)


def xz_bpb(data: bytes) -> float:
    return 8.0 * len(xz(data)) / len(data)


def zlib_bpb(data: bytes) -> float:
    return 8.0 * len(zlib.compress(data, 9)) / len(data)


BASELINES = {"gzip -9": gzip_bpb, "xz -9e": xz_bpb}
