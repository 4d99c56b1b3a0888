"""Zip-space, the easier format: byte-aligned LZ77 triples (offset u16, length u8, literal) of the
same stdlib chunks as configs/zip.py, same model and steps."""

from configs import zip as base


def get_config():
    c = base.get_config()
    c.workdir = "runs/zip_lz77"
    c.data.format = "lz77"
    return c
