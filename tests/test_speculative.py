"""Multi-byte heads and self-speculative decoding: greedy output equals plain greedy decoding, sampled bytes
have the plain sampler's distribution (chi-square over many seeds, with a check that the test can tell a
different distribution apart), and the extra heads train with the LM loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hqf_jax.infer import Engine, EngineError
from hqf_jax.infer.speculative import speculative_generate
from tests.speculative_checks import check_sampling_equals_plain
from hqf_jax.nn.retnet import RetNetConfig, RetNetLM
from hqf_jax.trainer.lm_task import next_byte_loss


def model_with_heads(k=2, sharp=4.0):
    """A tiny random model with peaked next-byte laws; the extra heads copy the main head, so drafts are
    sometimes right and sometimes wrong (both branches of the acceptance run)."""
    cfg = RetNetConfig(d_model=32, num_layers=2, num_heads=2, qk_dim=32, v_dim=64, ffn_dim=64, chunk_size=8,
                       extra_heads=k)
    m = RetNetLM(cfg, nnx.Rngs(0))
    m.head.kernel.set_value(m.head.kernel.get_value() * sharp)
    for h in m.extra_heads:
        h.kernel.set_value(m.head.kernel.get_value())
    return m


@pytest.fixture(scope="module")
def engine():
    return Engine(model_with_heads(), dtype="float32", prompt_bucket=16)


def test_greedy_equals_plain_greedy(engine):
    prompts = [b"hello wor", b"ab", b"a prompt of two chunks"]
    ids, stats = speculative_generate(engine, prompts, 16)
    np.testing.assert_array_equal(ids, engine.generate_ids(prompts, 16))
    assert stats["bytes_per_verify"] >= 1.0


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_padded_batch_leaves_the_real_rows_unchanged(engine, temperature):
    """An engine that pads its decode batch (min_rows, as batch 1 on a GPU does by default) gives speculative
    decoding the same bytes and verify counts for the real row, greedy and sampled."""
    padded = Engine(engine.model, dtype="float32", prompt_bucket=16, min_rows=4)
    want = speculative_generate(engine, [b"def f(x):"], 24, temperature=temperature, seed=3)
    got = speculative_generate(padded, [b"def f(x):"], 24, temperature=temperature, seed=3)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1] and got[0].shape == (1, 24)


@pytest.mark.parametrize("passes", [2, 3])
def test_passes_between_checks_do_not_change_the_output(engine, passes):
    """Several verify passes between two looks at whether every row is done: rows that finish first keep drafting
    past max_new, dropped; the sampled bytes and each row's verify count equal one pass a look."""
    prompts = [b"def f(x):", b"import o", b"class A:"]
    want = speculative_generate(engine, prompts, 21, temperature=1.0, seed=5, passes=1)
    got = speculative_generate(engine, prompts, 21, temperature=1.0, seed=5, passes=passes)
    np.testing.assert_array_equal(got[0], want[0])
    run, last = got[1].pop("passes_run"), max(want[1]["verifies"])
    assert want[1].pop("passes_run") == last  # one pass a look: no pass past the last live row's
    assert got[1] == want[1] and want[1]["bytes_per_verify"] > 1.0
    assert run % passes == 0 and last <= run < last + passes  # whole trips, at most passes - 1 past the end


def test_fused_engine_verifies_with_its_fused_weights(engine):
    """An engine built with a fused decode_impl runs the verify pass (and the prefill) with its concatenated
    projections: the forward gives the layers' logits, hidden states and collected keys/values, and greedy
    speculative output equals plain greedy decoding."""
    from hqf_jax.infer.step import forward, init_state

    fused = Engine(engine.model, dtype="float32", prompt_bucket=16, decode_impl="fused")
    assert fused.fused_weights is not None
    tokens = jnp.asarray([[104, 101, 108, 108, 111], [1, 2, 3, 4, 5]], jnp.int32)
    state = init_state(engine.model.cfg, jnp.asarray([3, 0], jnp.int32))
    (ref_kvs, got_kvs) = ([], [])
    ref = forward(engine.model, tokens, state, kvs=ref_kvs, return_hidden=True)
    got = forward(engine.model, tokens, state, kvs=got_kvs, return_hidden=True, fw=fused.fused_weights)
    for a, b in zip(jax.tree.leaves((ref, ref_kvs)), jax.tree.leaves((got, got_kvs))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    zeroed = jax.tree.map(jnp.zeros_like, fused.fused_weights)  # the products come from fw, not the layers
    assert not np.allclose(forward(engine.model, tokens, state, fw=zeroed)[0], ref[0], atol=1e-3)
    prompts = [b"hello wor", b"a prompt of two chunks"]
    ids, _ = speculative_generate(fused, prompts, 16)
    np.testing.assert_array_equal(ids, engine.generate_ids(prompts, 16))


def test_rows_without_top_k_or_top_p_skip_the_filter_bit_for_bit():
    """target_probs(filtering=False), what speculative decoding runs when no row has top-k or top-p on, is the
    filtered law bit for bit for such rows (greedy, tempered); with top-p on the filter does change it."""
    from hqf_jax.infer.engine import Settings
    from hqf_jax.infer.speculative import target_probs

    logits = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 256)) * 3
    off = Settings.make(3, 0, temperature=np.array([0.0, 0.7, 1.0], np.float32))
    np.testing.assert_array_equal(target_probs(logits, off, 256, filtering=False), target_probs(logits, off, 256))
    on = Settings.make(3, 0, temperature=1.0, top_p=0.5)
    assert not np.array_equal(target_probs(logits, on, 256, filtering=False), target_probs(logits, on, 256))


def test_sampled_distribution_equals_plain_sampling(engine):
    check_sampling_equals_plain(engine)


def test_extra_heads_train_with_the_lm_loss():
    m = model_with_heads(k=2, sharp=1.0)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 17), 0, 256)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    loss, metrics = nnx.jit(lambda mm: next_byte_loss(mm, batch, None, extra_heads_weight=0.5))(m)

    @nnx.jit  # the reference in one compiled call (not one compile per primitive in eager mode)
    def reference(mm):
        logits, hidden = mm(batch["inputs"], return_hidden=True)
        main = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
        extra = mm.extra_logits(hidden)
        heads = [optax.softmax_cross_entropy_with_integer_labels(extra[j][:, :-(j + 1)],
                                                                 batch["targets"][:, j + 1:]).mean() for j in range(2)]
        return main, heads

    main, heads = reference(m)
    np.testing.assert_allclose(float(loss), float(main + 0.5 * (heads[0] + heads[1]) / 2), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["bpb"]), float(main) / np.log(2), rtol=1e-5)
    grads = nnx.jit(nnx.grad(lambda mm: next_byte_loss(mm, batch, None, extra_heads_weight=0.5)[0]))(m)
    assert float(jnp.abs(grads.extra_heads[1].kernel.get_value()).sum()) > 0


def test_errors_name_the_fix():
    cfg = RetNetConfig(d_model=32, num_layers=1, num_heads=2, qk_dim=32, v_dim=64, ffn_dim=64)
    with pytest.raises(EngineError, match="model.extra_heads"):
        speculative_generate(Engine(RetNetLM(cfg, nnx.Rngs(0)), dtype="float32"), [b"x"], 4)


def test_bad_counts_are_refused(engine):
    with pytest.raises(EngineError, match="max_new must be >= 1"):
        speculative_generate(engine, [b"x"], 0)
    with pytest.raises(EngineError, match="passes must be >= 1"):
        speculative_generate(engine, [b"x"], 4, passes=0)
