"""Small shared builders for tests: tiny configs and corpora that never touch the network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hqf_jax import cli

ROOT = Path(__file__).resolve().parents[1]
# the byte LM the training-process tests run (one layer of configs/lm_tiny.py's kind, narrower): what a run, a
# resume, a fault or a mesh needs to be shown, at the least compile and step time
SMALL_LM = {"model.num_layers": 1, "model.d_model": 32, "model.qk_dim": 32, "model.v_dim": 64, "model.ffn_dim": 64}


def as_args(overrides: dict) -> list[str]:
    """key=value command-line overrides of a dict."""
    return [f"{k}={v}" for k, v in overrides.items()]


def tiny_config(**overrides):
    cfg = cli.load_config_file(str(ROOT / "configs/lm_tiny.py"))
    return cli.apply_overrides(cfg, [f"{k}={v}" for k, v in overrides.items()])


def run_module(module: str, *args: str, timeout: int = 600, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, **popen)


def assert_one_line(msg: str, *needles: str) -> None:
    """msg is one line (no traceback) holding every needle: the form of the house's user-facing errors."""
    assert "\n" not in msg.strip() and "Traceback" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
