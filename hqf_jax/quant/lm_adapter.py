"""Glue between the quantizer's pytree API and the byte LM (hqf_jax.nn.retnet.RetNetLM): parameters as a
pure dict, a model carrying given parameters, bits-per-byte on held-out bytes, greedy continuations.

Any other model plugs into eval/quant_eval.py and studies/quant_analysis.py through the same three callables:
params (a dict of arrays), loss_fn(params) -> float, generate_fn(params) -> int array (prompts, steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hqf_jax.nn import generate
from hqf_jax.ops.constants import NUM_BYTES


def params_of(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def with_params(model: nnx.Module, params: dict) -> nnx.Module:
    """A copy of model whose nnx.Param leaves are `params` (same structure as params_of), cast to their dtypes."""
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    old = nnx.to_pure_dict(state)
    cast = jax.tree_util.tree_map(lambda o, n: jnp.asarray(n, o.dtype), old, params)
    nnx.replace_by_pure_dict(state, cast)
    return nnx.merge(graphdef, state, rest)


def load_run_model(run: str, step: int | None = None):
    """(model, config, step) of a train.lm run folder."""
    from hqf_jax.trainer import lm_task

    return lm_task.load_run(run, step)


def random_model(config_path: str = "configs/lm_tiny.py", seed: int = 0):
    """A randomly initialised byte LM of a config file (the negative control of the band statistics)."""
    from hqf_jax import cli
    from hqf_jax.trainer import lm_task

    cfg = cli.load_config_file(config_path)
    cfg.unlock()
    cfg.train.seed = seed
    return lm_task.build_model(cfg), cfg


def make_bpb_fn(model: nnx.Module, stream: np.ndarray, seq_len: int, batch_size: int = 16, max_bytes: int = 1 << 16):
    """loss_fn(params) -> validation bits per byte of `model` carrying params (non-overlapping windows)."""
    from hqf_jax.trainer import lm_task

    evaluate = lm_task.make_eval_fn(stream, seq_len, batch_size, max_bytes)
    return lambda params: float(evaluate(with_params(model, params))["valid_bpb"])


def make_greedy_fn(model: nnx.Module, prompts: list[bytes], steps: int):
    """generate_fn(params) -> (len(prompts), steps) greedy byte ids. Prompts are cut to a common length."""
    n = min(len(p) for p in prompts)
    ids = np.stack([generate.encode_prompt(p[:n]) for p in prompts])

    def gen(params):
        m = with_params(model, params)
        return np.asarray(generate.sample(m, jnp.asarray(ids), steps, jax.random.PRNGKey(0), temperature=0.0))

    return gen


def prompts_from(stream: np.ndarray, n: int, length: int, seed: int = 0) -> list[bytes]:
    """n fixed prompts: byte windows of a held-out stream at seeded positions."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, max(1, len(stream) - length), size=n)
    return [bytes(stream[s:s + length].tolist()) for s in starts]


def ids_to_text(ids) -> str:
    return bytes(int(i) for i in np.asarray(ids).reshape(-1) if 0 <= int(i) < NUM_BYTES).decode("utf-8", "replace")
