"""The fused decode step (hqf_jax.infer.fused: concatenated projections, one mixer per layer, position tables
once per step) computes the module-by-module recurrent step: float32 logits and states agree over several
steps of a left-padded batch whose rows sit at different positions, for xPos, RoPE and no positions, in jnp
and in the Pallas kernel (interpret mode; whole heads, and heads in column blocks); greedy engine output is
identical; the decode loop's compiled HLO has fewer ops per step."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hqf_jax.infer import Engine, Settings
from hqf_jax.infer.engine import _decode
from hqf_jax.infer.step import forward
from hqf_jax.infer.fused import fused_step
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM


def tiny(position="xpos", layers=2):
    cfg = RetNetConfig(d_model=64, num_layers=layers, num_heads=2, qk_dim=64, v_dim=64, ffn_dim=96, chunk_size=8,
                       position=position)
    return RetNetLM(cfg, nnx.Rngs(1))


@pytest.mark.parametrize("position,impl,dot_rows", [("xpos", "xla", 1), ("rope", "xla", 1), ("none", "xla", 1),
                                                    ("xpos", "pallas", 1), ("rope", "pallas_split", 1),
                                                    ("xpos", "xla", 8)])
def test_fused_step_matches_recurrent_float32(position, impl, dot_rows):
    _compare_steps(position, impl, dot_rows, interpret=True)


@pytest.mark.gpu
@pytest.mark.parametrize("impl,dot_rows", [("pallas", 1), ("pallas_split", 1), ("pallas", 8)])
def test_fused_kernels_on_gpu(impl, dot_rows):
    """The mixer kernels compiled for the GPU (Triton), not interpreted: the same float32 agreement (dots at
    float32 precision, so that TF32 does not blur the comparison)."""
    with jax.default_matmul_precision("highest"):
        _compare_steps("xpos", impl, dot_rows, interpret=False)


def _compare_steps(position, impl, dot_rows, interpret):
    eng = Engine(tiny(position), dtype="float32", decode_impl="fused", prompt_bucket=8)
    slots = eng.prefill([b"hello world", b"ab"], Settings.make(2))
    model = nnx.merge(eng.graphdef, eng.weights)
    s_ref = s_new = slots.state
    token = jnp.asarray([7, 200], jnp.int32)
    for _ in range(3):
        ref, s_ref = forward(model, token[:, None], s_ref)
        got, s_new = fused_step(model, eng.fused_weights, token, s_new, impl, interpret=interpret, dot_rows=dot_rows)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref[:, 0]), rtol=2e-4, atol=2e-4)
        for a, b in zip(s_new, s_ref):
            np.testing.assert_allclose(np.asarray(a.kv), np.asarray(b.kv), rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(np.asarray(a.offset), np.asarray(b.offset))
        token = jnp.argmax(ref[:, 0, :256], -1).astype(jnp.int32)


def test_fused_engine_greedy_bytes_equal():
    model = tiny()
    prompts = [b"def f(x):", b"import"]
    want = Engine(model, dtype="float32", prompt_bucket=8).generate_ids(prompts, 12)
    for impl, rows in (("fused", 1), ("fused_pallas", 1), ("fused_pallas_split", 1), ("fused_pallas", 8)):
        got = Engine(model, dtype="float32", prompt_bucket=8, decode_impl=impl, unroll=2,
                     dot_rows=rows).generate_ids(prompts, 12)
        np.testing.assert_array_equal(got, want)


# the padding is in _decode, so any decode impl: jnp, and jnp over int8 kernels
@pytest.mark.parametrize("impl,quant", [("jnp", None), ("jnp", "int8:group_size=32")])
def test_min_rows_padding_leaves_the_real_rows_unchanged(impl, quant):
    """A batch padded with copies of row 0 (Engine(min_rows=...)) gives the real rows the same bytes, greedy and
    sampled, and the same slots after, over chained decode calls."""
    model = tiny()
    for settings in (Settings.make(1), Settings.make(1, seed=5, temperature=1.0, top_p=0.9)):
        outs = []
        for rows in (1, 4):
            eng = Engine(model, dtype="float32", prompt_bucket=8, decode_impl=impl, quant=quant, min_rows=rows)
            slots = eng.prefill([b"def f(x):"], settings)
            slots, a = eng.decode(slots, 5)
            slots, b = eng.decode(slots, 4)
            assert slots.token.shape == (1,) and a.shape == (1, 5)
            outs.append((np.concatenate([a, b], 1), np.asarray(slots.state[0].kv)))
        np.testing.assert_array_equal(outs[0][0], outs[1][0])
        np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-6, atol=1e-6)


def test_auto_padding_is_the_measured_one(monkeypatch):
    """The padding a decode call runs with (Engine.static_args -> (.., dot_rows, min_rows)): none on a CPU; on a GPU
    batch 1 as 8 rows for unquantized weights (then the dots already have 8 rows), the fused dots padded only
    when the step runs one row (min_rows=1), nothing from batch 2; explicit values win."""
    pad = lambda eng, b: eng.static_args(b)[3:]
    assert pad(Engine(tiny(), dtype="float32", decode_impl="fused_pallas"), 1) == (1, 1)  # CPU: none
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # static choices only: nothing runs
    fused = Engine(tiny(), dtype="float32", decode_impl="fused_pallas")
    assert [pad(fused, b) for b in (1, 2, 8)] == [(1, 8), (1, 1), (1, 1)]
    assert [pad(Engine(tiny(), dtype="float32"), b) for b in (1, 2)] == [(1, 8), (1, 1)]  # jnp: batch padding only
    assert pad(Engine(tiny(), dtype="float32", quant="int8:group_size=32"), 1) == (1, 1)  # measured slower padded
    one = Engine(tiny(), dtype="float32", decode_impl="fused_pallas", min_rows=1)
    assert [pad(one, b) for b in (1, 2)] == [(8, 1), (1, 1)]
    assert pad(Engine(tiny(), dtype="float32", decode_impl="fused_pallas", min_rows=1, dot_rows=1), 1) == (1, 1)
    assert pad(Engine(tiny(), dtype="float32", min_rows=4), 3) == (1, 4)


def test_dot_rows_pads_only_the_fused_steps_dots():
    """dot_rows pads the dots (the padded rows never reach the result) and is refused where there are no XLA
    dots to pad."""
    from hqf_jax.infer.engine import EngineError
    from hqf_jax.infer.fused import padded_rows

    a = jnp.arange(6.0).reshape(2, 3)
    w = jnp.arange(12.0).reshape(3, 4) / 7
    seen = []
    y = padded_rows(lambda z: seen.append(z.shape) or z @ w, a, 8)
    assert seen == [(8, 3)] and y.shape == (2, 4)
    np.testing.assert_allclose(np.asarray(y), np.asarray(a @ w), rtol=1e-6)
    for impl, rows in (("jnp", 8), ("fused_gemv", 8), ("fused", 0)):
        with pytest.raises(EngineError, match="dot_rows"):
            Engine(tiny(), dtype="float32", decode_impl=impl, dot_rows=rows)
    with pytest.raises(EngineError, match="min_rows"):
        Engine(tiny(), dtype="float32", min_rows=0)


def ops_per_step(engine) -> int:
    """Non-trivial ops in the compiled decode loop's body (CPU HLO): the launches of one step on a GPU, roughly."""
    from hqf_jax.infer.hlo_count import loop_body_ops

    slots = engine.prefill([b"ab"], Settings.make(1, 0, temperature=1.0, top_p=0.9))
    lowered = _decode.lower(engine.graphdef, engine.weights, engine.fused_weights, slots, 4, engine.vocab_limit,
                            engine.decode_impl, engine.interpret, 1)
    return sum(loop_body_ops(lowered.compile().as_text()).values())


def test_fused_step_has_fewer_ops():
    model = tiny(layers=4)
    before = ops_per_step(Engine(model, dtype="bfloat16"))
    after = ops_per_step(Engine(model, dtype="bfloat16", decode_impl="fused"))
    assert after < 0.85 * before, (before, after)


def test_column_split_fills_the_gpu_at_small_batch_only():
    """auto_v_split: the 125M LM (6 heads, Dv 256) splits each head in 8 at batch 1 (48 programs), not at batch 8
    (48 already); a split the head cannot take is refused with the fix."""
    from pallas_kernels.retention_decode_fused import FusedDecodeError, auto_v_split, fused_mixer

    assert [auto_v_split(b, 6, 256) for b in (1, 2, 4, 8)] == [8, 4, 2, 1]
    assert auto_v_split(1, 2, 32) == 2 and auto_v_split(1, 1, 16) == 1
    eng = Engine(tiny(), dtype="float32", decode_impl="fused", prompt_bucket=8)
    slots = eng.prefill([b"ab"], Settings.make(1))
    model = nnx.merge(eng.graphdef, eng.weights)
    h = jnp.zeros((1, 4 * 64), jnp.float32)
    tables = (jnp.ones((1, 16)), jnp.zeros((1, 16)), jnp.ones((1, 16)))
    with pytest.raises(FusedDecodeError, match="v_split=4"):
        fused_mixer(h, model.blocks[0].retention.group_norm.scale[...], jnp.ones(2) * 0.9, jnp.ones((1, 2)),
                    tables, slots.state[0], 2, 1e-5, interpret=True, v_split=4)
