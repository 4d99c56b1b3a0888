"""The standard decoder baseline at the ~128M config: a Llama-style transformer with the parameters of
configs/lm_125m.py's RetNet (same width, depth, heads; SwiGLU widened), trained on the same bytes."""

from configs import lm_125m


def get_config():
    c = lm_125m.get_config()
    c.workdir = "runs/lm_125m_transformer"
    c.model.arch = "transformer"
    return c
