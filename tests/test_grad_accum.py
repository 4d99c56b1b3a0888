"""train.grad_accum: k micro-batches in the shared step give the step on the whole batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hqf_jax.nn.retnet import RetNetConfig, RetNetLM
from hqf_jax.trainer.lm_task import next_byte_loss
from hqf_jax.trainer.loop import _train_state, make_train_step


def _setup():
    model = RetNetLM(RetNetConfig(d_model=32, num_layers=2, num_heads=2, qk_dim=32, v_dim=64, ffn_dim=64,
                                  chunk_size=8), nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.sgd(0.5)  # plain SGD: the update is the gradient itself (Adam would hide it behind g/|g|)
    data = np.random.default_rng(0).integers(0, 256, (8, 25), dtype=np.int32)
    batch = {"inputs": jnp.asarray(data[:, :-1]), "targets": jnp.asarray(data[:, 1:])}
    return graphdef, params, rest, tx, batch


@pytest.mark.parametrize("k", [2, 4])
def test_accumulating_micro_batches_equals_one_step_on_the_whole_batch(k):
    graphdef, params, rest, tx, batch = _setup()
    with jax.default_matmul_precision("highest"):
        outs = {}
        for accum in (1, k):
            step = jax.jit(make_train_step(next_byte_loss, graphdef, tx, lambda s: 0.5, 0, grad_accum=accum))
            outs[accum] = step(_train_state(params, tx.init(params), 0), rest, batch)
    (s1, m1), (sk, mk) = outs[1], outs[k]
    assert int(sk["step"]) == 1
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(sk["params"])):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    for name in ("loss", "bpb", "grad_norm"):
        np.testing.assert_allclose(m1[name], mk[name], rtol=1e-6)
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(sk["params"])))
    assert moved > 1e-3  # the step did update the parameters


def test_grad_accum_must_divide_the_batch():
    graphdef, params, rest, tx, batch = _setup()
    step = make_train_step(next_byte_loss, graphdef, tx, lambda s: 0.5, 0, grad_accum=3)
    with pytest.raises(ValueError, match="data.batch_size"):
        jax.eval_shape(step, _train_state(params, tx.init(params), 0), rest, batch)
    with pytest.raises(ValueError, match="grad_accum"):
        make_train_step(next_byte_loss, graphdef, tx, lambda s: 0.5, 0, grad_accum=0)


def test_the_trainer_takes_train_grad_accum(tmp_path):
    from hqf_jax import cli
    from hqf_jax.trainer import lm_task
    from hqf_jax.trainer.loop import train
    from tests.helpers import tiny_config

    cfg = tiny_config(**{"model.d_model": 32, "model.qk_dim": 32, "model.v_dim": 64, "model.ffn_dim": 64,
                         "data.max_files": 5, "data.seq_len": 32, "data.batch_size": 4, "train.steps": 2,
                         "train.grad_accum": 2, "train.log_every": 1, "train.eval_every": 1000,
                         "train.sample_every": 1000, "train.ckpt_every": 1000})
    task, _ = lm_task.build_task(cfg)
    final = train(task, cfg.train, cfg.mesh, tmp_path, cli.config_to_json(cfg), progress=False)
    assert final["step"] == 2 and np.isfinite(final["loss"])
