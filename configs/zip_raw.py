"""Zip-space's reference: the same stdlib chunks as configs/zip.py as raw text, same model and steps."""

from configs import zip as base


def get_config():
    c = base.get_config()
    c.workdir = "runs/zip_raw"
    c.data.format = "raw"
    return c
