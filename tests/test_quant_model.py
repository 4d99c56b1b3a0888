"""Quantized dense layers inside the byte LM: config-selectable, reference and Pallas agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hqf_jax.nn.retnet import RetNetConfig, RetNetLM
from hqf_jax.quant.config import QuantConfigError
from hqf_jax.quant.model import QuantLinear, quantize_model

SMALL = dict(d_model=64, num_layers=1, num_heads=2, qk_dim=64, v_dim=128, ffn_dim=128, chunk_size=8)

# Run the model jitted: eager calls pay one XLA compile per primitive and shape (op-by-op dispatch).
FWD = nnx.jit(lambda m, t: m(t))
STEP = nnx.jit(lambda m, tok, s: m.step(tok, s))


def _model(**over):
    return RetNetLM(RetNetConfig(**{**SMALL, **over}), nnx.Rngs(0))


def test_int8_model_tracks_the_float_model_and_all_forms_still_agree():
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 0, 256)
    ref = FWD(_model(), tokens)
    model, report = quantize_model(_model(), "int8", min_size=1024)
    assert len(report) == 8  # q, k, v, g, o and the three SwiGLU matrices; the head is skipped
    assert sum(isinstance(n, QuantLinear) for _, n in nnx.iter_graph(model)) == len(report)
    got = FWD(model, tokens)
    p_ref, p_got = jax.nn.softmax(ref), jax.nn.softmax(got)
    assert float(jnp.abs(p_ref - p_got).sum(-1).max()) < 0.05
    state, steps = model.init_state(2), []
    for t in range(tokens.shape[1]):
        out, state = STEP(model, tokens[:, t], state)
        steps.append(out)
    np.testing.assert_allclose(jnp.stack(steps, 1), got, atol=2e-3, rtol=2e-3)


def test_pallas_impl_equals_reference_impl_in_interpret_mode():
    tokens = jax.random.randint(jax.random.PRNGKey(1), (1, 8), 0, 256)
    wide = dict(d_model=128, qk_dim=128, v_dim=256, ffn_dim=256)  # the kernel's blocks need K >= 128
    a, _ = quantize_model(_model(**wide), "nf4", impl="reference", min_size=1024)
    b, _ = quantize_model(_model(**wide), "nf4", impl="pallas", min_size=1024, interpret=True)
    np.testing.assert_allclose(FWD(b, tokens), FWD(a, tokens), atol=2e-2, rtol=2e-2)


def test_nothing_to_quantize_is_a_clear_error():
    with pytest.raises(QuantConfigError, match="lower min_size"):
        quantize_model(_model(), "int8", min_size=10**9)
