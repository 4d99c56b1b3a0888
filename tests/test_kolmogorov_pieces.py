"""Issue 17 item 4 and 5 inside GRPO: the CC memory trained in the gradient, the frozen-model gain verifier,
injection over the byte vocabulary, and episodes rolled out through the generation engine."""

import jax
import numpy as np
from flax import nnx

from hqf_jax import cli
from hqf_jax.rl import kolmogorov as kg
from hqf_jax.rl.grpo_task import build_grpo_task
from hqf_jax.rl.rollout import encode_prompts, teacher_forced_logprobs
from hqf_jax.rl.toy_policy import TinyGRULM
from hqf_jax.rl.verifier import GainVerifier


def tiny(*overrides):
    return cli.apply_overrides(cli.load_config_file("configs/grpo_tiny.py"), list(overrides))


def test_memory_rewrite_rows_join_the_gradient(tmp_path):
    cfg = tiny("rl.pattern=cdv_cc", "rl.cc_in_gradient=True", "rl.memory_budget=6", "rl.prompt_width=25")
    _, drv = build_grpo_task(cfg, tmp_path)
    rows = drv.batch_fn(0)
    n, g = cfg.rl.sources_per_step * cfg.rl.group_size, cfg.rl.group_size
    assert rows["tokens"].shape[0] == 4 * n  # C and D rows of the episode, then of the memory rewrite
    mem_adv = rows["adv"][2 * n:3 * n]
    np.testing.assert_allclose(mem_adv.reshape(-1, g).sum(1), 0, atol=1e-5)  # its own groups, centred
    np.testing.assert_allclose(mem_adv, drv.mem_ep.rewards - drv.mem_ep.rewards.reshape(-1, g).mean(1).repeat(g),
                               atol=1e-5)
    assert rows["mask"][2 * n:].sum() > 0
    best = kg.best_codes(drv.mem_ep, g)
    assert drv.memories == [c[:6] for c in best] and all(len(m) <= 6 for m in drv.memories)
    srcs = [s for s, _, _ in drv.mem_ep.samples[::g]]  # the rewrite's source: old memory + the best code
    assert all(s == m0 + c for s, m0, c in zip(srcs, [b""] * 2, kg.best_codes(drv._last_ep, g)))
    assert np.isfinite(drv.metrics["rl/mem_fidelity"])


def test_gain_verifier_is_the_saved_code_length():
    model = TinyGRULM(rngs=nnx.Rngs(0))
    v = GainVerifier(model, width=64)
    s, ds = [b"hello world", b"abcabc"], [b"hello", b""]
    got = v(s, ds)
    for i, (src, d) in enumerate(zip(s, ds)):
        nll = []
        for pre in (kg.verifier_prompt(d), kg.verifier_prompt(b"")):
            toks, _ = encode_prompts([pre + src + b"\x00"])  # a placeholder last byte, replaced by EOS
            toks[0, -1] = 257
            lp = np.asarray(teacher_forced_logprobs(model, jax.numpy.asarray(toks)))[0]
            nll.append(-lp[1 + len(pre):].sum())
        np.testing.assert_allclose(got[i], np.clip(1 - nll[0] / nll[1], 0, 1), atol=1e-5)
    assert got[1] == 0.0  # an empty reconstruction saves nothing


def test_byte_injection_vocabulary_and_engine_episode(tmp_path):
    assert len(kg.INJECT_VOCABS["bytes"]) == 253 and b"\x00" in kg.INJECT_VOCABS["bytes"]
    rng = np.random.default_rng(0)
    items = {it for _ in range(200) for it in kg.sample_constraints(rng, b"abc", 3, 0, kg.BYTE_INJECT_VOCAB).inject}
    assert any(it[0] >= 128 for it in items) and any(it[0] < 32 for it in items)  # not only a-z
    cfg = tiny("rl.n_inject=2", "rl.inject_vocab=bytes", "rl.rollout_impl=engine", "rl.d_greedy=True")
    _, drv = build_grpo_task(cfg, tmp_path)
    ep = drv._episode(drv.policy(), 0)
    loop = kg.run_episode(drv.policy(), [s for s, _, _ in ep.samples[::cfg.rl.group_size]], jax.random.PRNGKey(0),
                          kg.dataclasses.replace(drv.kcfg, rollout_impl="loop", c_temperature=1.0))
    assert ep.c.tokens.shape == loop.c.tokens.shape  # the engine's rollout has the step loop's layout
    assert np.isfinite(ep.rewards).all()
