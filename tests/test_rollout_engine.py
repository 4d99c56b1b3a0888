"""GRPO rollouts through the generation engine (issue 17 item 5) against the step loop of hqf_jax/rl/rollout.py:
the same tokens at temperature 0, the same layout, and statistics that are the model's own (teacher-forced)
under the same sampling distribution design at temperature > 0."""

import jax
import numpy as np
import pytest
from flax import nnx

from hqf_jax.nn.retnet import RetNetConfig, RetNetLM
from hqf_jax.ops.constants import EOS_ID
from hqf_jax.rl import rollout as ro
from hqf_jax.rl.engine_rollout import engine_rollout
from hqf_jax.rl.rollout import RolloutError
from hqf_jax.rl.sampling import process_logits
from hqf_jax.rl.toy_policy import TinyGRULM

# the references run jitted: one compile each, not one per primitive and shape in eager mode
forward = nnx.jit(lambda m, t: m(t))
teacher_forced_stats = jax.jit(ro.teacher_forced_stats)
sampling_logprobs = jax.jit(lambda lg, t, k, p: jax.nn.log_softmax(process_logits(lg, t, k, p), -1),
                            static_argnums=(1, 2, 3))

PROMPTS = [b"<c>hello there</c>", b"<d>x</d>", b"<c>a much longer prompt, with more bytes</c>"]


def _model(position="xpos"):
    cfg = RetNetConfig(d_model=32, num_layers=2, num_heads=2, qk_dim=32, v_dim=64, ffn_dim=64, chunk_size=8,
                       position=position)
    return RetNetLM(cfg, nnx.Rngs(1))


@pytest.mark.parametrize("position", ["xpos", "rope"])
def test_greedy_engine_equals_step_loop(position):
    model = _model(position)
    p, lens = ro.encode_prompts(PROMPTS, width=56)
    cfg = ro.SampleConfig(max_new_tokens=20, top_k=1, suppress_tokens=(256, 258))
    old = ro.rollout(model, p, lens, jax.random.PRNGKey(0), cfg)
    new = engine_rollout(model, p, lens, jax.random.PRNGKey(9), cfg)  # another key: greedy ignores it
    np.testing.assert_array_equal(np.asarray(new.tokens), np.asarray(old.tokens))
    np.testing.assert_array_equal(np.asarray(new.mask), np.asarray(old.mask))
    np.testing.assert_array_equal(np.asarray(new.lengths), np.asarray(old.lengths))
    for a, b in [(new.logprobs, old.logprobs), (new.entropy, old.entropy), (new.varentropy, old.varentropy),
                 (new.sample_logprobs, old.sample_logprobs)]:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4, rtol=2e-4)


def test_sampled_engine_rollout_scores_its_tokens_like_the_model():
    model = _model()
    p, lens = ro.encode_prompts(PROMPTS, width=56)
    cfg = ro.SampleConfig(max_new_tokens=16, temperature=0.7, top_k=40, top_p=0.9, stop_token=EOS_ID)
    r = engine_rollout(model, p, lens, jax.random.PRNGKey(3), cfg)
    logits = forward(model, r.tokens)
    tf_lp, tf_ent, tf_var = teacher_forced_stats(logits, r.tokens)
    live = np.asarray(r.mask).copy()
    gen = live.copy()
    for i, n in enumerate(lens):
        live[i, 1:n] = True
    for got, want in [(r.logprobs, tf_lp), (r.entropy, tf_ent), (r.varentropy, tf_var)]:
        np.testing.assert_allclose(np.asarray(got)[live], np.asarray(want)[live], rtol=2e-4, atol=2e-4)
    # the sampling distribution is the step loop's: process_logits of the (BOS/PAD-suppressed) model logits
    lg = np.asarray(logits[:, :-1]).copy()
    lg[..., list(cfg.suppress_tokens)] = -1e30
    slp = sampling_logprobs(lg, cfg.temperature, cfg.top_k, cfg.top_p)
    want = np.take_along_axis(np.asarray(slp), np.asarray(r.tokens)[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(r.sample_logprobs)[:, 1:][gen[:, 1:]], want[gen[:, 1:]], atol=2e-4)
    assert np.isfinite(np.asarray(r.sample_logprobs)[gen]).all()
    # rows are independent of the batch: row 1 alone draws the same bytes
    alone = engine_rollout(model, p[1:2], lens[1:2], jax.random.PRNGKey(3), cfg)
    # row keys are fold_in(key, row index): the row moved from index 1 to 0, so compare against index-0 keys
    r0 = engine_rollout(model, p[[1, 0]], lens[[1, 0]], jax.random.PRNGKey(3), cfg)
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(r0.tokens)[0])


def test_engine_rollout_refuses_what_it_cannot_do():
    p, lens = ro.encode_prompts([b"ab"])
    with pytest.raises(RolloutError, match="rollout_impl=loop"):
        engine_rollout(TinyGRULM(rngs=nnx.Rngs(0)), p, lens, jax.random.PRNGKey(0), ro.SampleConfig())
    with pytest.raises(RolloutError, match="stop sequences"):
        engine_rollout(_model(), p, lens, jax.random.PRNGKey(0), ro.SampleConfig(stop_sequences=(b"\n",)))


@pytest.mark.study
def test_bench_rollout_small_times_the_engine_beside_the_loop(capsys):
    """bench.rollout --small: the engine's rollout is a row of the table, beside the step loop's forms, each with
    positive bytes/s; the loop forms agree on their tokens (same key); the engine (own random stream) reports the
    log-probs the parallel form gives its own tokens."""
    from bench.rollout import main

    main(["--small", "--groups", "2", "--reps", "2", "--budget-s", "2", "--no-parallel"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  2 ")]
    by = {" ".join(r[2:-6]): r for r in rows}
    assert set(by) == {"recurrent (prefill)", "recurrent (no prefill)", "engine (rl.rollout_impl=engine)",
                       "GRPO train step (fwd+bwd+adamw)"}
    assert all(float(r[-5].replace(",", "")) > 0 for r in rows)
    assert by["recurrent (no prefill)"][-2] == "4/4" and by["engine (rl.rollout_impl=engine)"][-2] == "-"
    assert float(by["engine (rl.rollout_impl=engine)"][-1]) < 1e-3  # its log-probs are the parallel form's
