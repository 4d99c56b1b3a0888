"""The byte LM's three forms give the same logits; the recurrent generator reproduces the parallel form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hqf_jax.nn import generate
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM

jax.config.update("jax_default_matmul_precision", "highest")

SMALL = dict(d_model=32, num_layers=2, num_heads=2, qk_dim=32, v_dim=64, ffn_dim=64, chunk_size=4)

# Run the model jitted: eager calls pay one XLA compile per primitive and shape (op-by-op dispatch).
FWD = nnx.jit(lambda m, t, form=None: m(t, form=form), static_argnames=("form",))
PREFILL = nnx.jit(lambda m, t, s: m(t, s, return_state=True))
STEP = nnx.jit(lambda m, tok, s: m.step(tok, s))


def build(cfg, seed):
    """Built eagerly: the init's few primitives compile once and are reused by every later build."""
    return RetNetLM(cfg, nnx.Rngs(seed))


@pytest.mark.parametrize("position", ["xpos", "rope", "none"])
def test_recurrent_reproduces_parallel_logits(position):
    model = build(RetNetConfig(**SMALL, position=position), 0)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 13), 0, 259)
    parallel = FWD(model, tokens, form="parallel")
    chunkwise = FWD(model, tokens, form="chunkwise")
    state, steps = model.init_state(2), []
    for t in range(tokens.shape[1]):
        logits, state = STEP(model, tokens[:, t], state)
        steps.append(logits)
    recurrent = jnp.stack(steps, 1)
    np.testing.assert_allclose(chunkwise, parallel, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(recurrent, parallel, atol=1e-4, rtol=1e-4)


def test_prefill_then_steps_equals_one_pass():
    model = build(RetNetConfig(**SMALL), 0)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (1, 11), 0, 256)
    full = FWD(model, tokens)
    logits, state = PREFILL(model, tokens[:, :6], model.init_state(1))
    rest = []
    for t in range(6, 11):
        out, state = STEP(model, tokens[:, t], state)
        rest.append(out)
    np.testing.assert_allclose(jnp.concatenate([logits, jnp.stack(rest, 1)], 1), full, atol=1e-4, rtol=1e-4)


def test_greedy_sample_matches_argmax_of_parallel_form():
    """Greedy generation through the recurrent form picks the argmax of the parallel logits at every step."""
    model = build(RetNetConfig(**SMALL), 3)
    prompt = jnp.asarray(generate.encode_prompt(b"ab"))[None]
    out = generate.sample(model, prompt, 8, jax.random.PRNGKey(0), temperature=0.0)
    seq = jnp.concatenate([prompt, out], 1)
    logits = FWD(model, seq, form="parallel")[:, prompt.shape[1] - 1:-1, :256]
    np.testing.assert_array_equal(out, jnp.argmax(logits, -1))
    streamed = list(generate.stream(model, b"ab", 8, temperature=0.0, stop_at_eos=False))
    np.testing.assert_array_equal(np.asarray(out[0]), streamed)


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32():
    cfg32 = RetNetConfig(**SMALL)
    cfg16 = RetNetConfig(**SMALL, compute_dtype="bfloat16")
    m32, m16 = build(cfg32, 0), build(cfg16, 0)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(m16, nnx.Param)))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, 256)
    l32, l16 = FWD(m32, tokens), FWD(m16, tokens)
    assert l16.dtype == jnp.float32
    p32, p16 = jax.nn.softmax(l32), jax.nn.softmax(l16)
    assert float(jnp.abs(p32 - p16).sum(-1).max()) < 0.05


def test_bad_model_config_is_refused():
    with pytest.raises(ValueError, match="multiples of num_heads"):
        RetNetLM(RetNetConfig(**{**SMALL, "qk_dim": 33}), nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.form"):
        RetNetLM(RetNetConfig(**SMALL, form="fast"), nnx.Rngs(0))


def test_attention_baseline_is_causal_and_equal_in_size():
    ret_model = build(RetNetConfig(**SMALL), 0)
    att_model = build(RetNetConfig(**SMALL, mixer="attention"), 0)
    from hqf_jax.nn.retnet import count_params

    assert count_params(ret_model) == count_params(att_model)
    tokens = jax.random.randint(jax.random.PRNGKey(5), (2, 10), 0, 256)
    full, prefix = FWD(att_model, tokens), FWD(att_model, tokens[:, :6])
    np.testing.assert_allclose(full[:, :6], prefix, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no recurrent state"):
        att_model.step(tokens[:, 0], att_model.init_state(2))


def test_form_precision_report_float32_agrees_and_bf16_errors_are_rounding_sized():
    from studies.form_precision import form_errors

    cfg = RetNetConfig(d_model=64, num_layers=2, num_heads=2, qk_dim=64, v_dim=128, ffn_dim=128, chunk_size=16)
    rows = {(r["dtype"], r["form"]): r for r in form_errors(cfg, jax.random.randint(jax.random.key(1), (1, 48), 0, 256))}
    for form in ("parallel", "chunkwise", "pallas"):
        assert rows[("float32", form)]["max_rel"] < 1e-4
        # bf16 keeps ~3 significant digits; through 2 blocks the logits stay within a few percent
        assert 1e-4 < rows[("bfloat16", form)]["max_rel"] < 0.1
