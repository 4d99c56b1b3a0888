"""The origin code's recipe (configs/retnphi_origin.py) on configs/retnphi_tiny.py: the CPU smoke test's arm."""

from configs import retnphi_origin, retnphi_tiny


def get_config():
    c = retnphi_origin.origin_recipe(retnphi_tiny.get_config(), rank=4)
    c.model.base_quant = "nf4:group_size=16"  # the tiny widths (32) are not multiples of 64
    c.workdir = "runs/retnphi_origin_tiny"
    return c
