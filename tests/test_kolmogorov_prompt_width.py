"""The prompt width of the Kolmogorov GRPO arms (issue 17): every arm of studies.kolmogorov_gpu, at tiny and GPU
scale, gets a width its longest possible prompts fit in (no RolloutError mid-run), the bound is exact, and a
config whose width is too small is refused at load time naming rl.prompt_width."""

import pytest

from hqf_jax import cli
from hqf_jax.errors import ConfigError
from hqf_jax.rl import kolmogorov as kg
from hqf_jax.rl.grpo_task import kolmogorov_config
from hqf_jax.rl.rollout import RolloutError, encode_prompts
from hqf_jax.rl.memory import memory_config
from studies import kolmogorov_gpu as study


def longest_prompts(k: kg.KolmogorovConfig, source_len: int) -> list[bytes]:
    """The longest prompts an episode of ``k`` can build: full-length sources, codes, memories and items."""
    item = max(k.inject_vocab, key=len)
    src = b"s" * (max(source_len, k.code_budget) if k.pattern == "ccv" else source_len)
    cons = kg.Constraints(tuple([item] * k.n_inject), tuple([b"b" * k.ban_len] * k.n_ban))
    mem = b"m" * k.memory_budget if k.pattern == "cdv_cc" else b""
    code = b"c" * k.code_budget
    out = [kg.compressor_prompt(src, cons, mem), kg.decompressor_prompt(code)]
    if k.pattern == "cqav":
        out.append(kg.answer_prompt(code, b"q" * k.question_len))
    if k.pattern == "cdv_cc":
        mk = memory_config(k)  # the memory rewrite (in the gradient or not) and its decoder
        out += [kg.compressor_prompt(b"m" * k.memory_budget + code), kg.decompressor_prompt(b"m" * mk.code_budget)]
    return out


@pytest.mark.parametrize("size", ["tiny", "gpu"], ids=["tiny_scale", "h200_scale"])
def test_every_arm_encodes_its_longest_prompts(size):
    cfg, preset = study.base_config(size, [])
    acfgs = study.arm_configs(cfg, list(study.ARMS))
    assert len({int(c.rl.prompt_width) for c in acfgs.values()}) == 1  # one width: shared rollout shapes
    for name, c in acfgs.items():
        k = kolmogorov_config(c.rl)
        prompts = longest_prompts(k, int(c.rl.source_len))
        toks, lens = encode_prompts(prompts, width=k.prompt_width)
        assert int(lens.max()) == kg.prompt_tokens_needed(k, int(c.rl.source_len)), name  # the bound is exact
        assert toks.shape[1] == k.prompt_width


def test_too_small_width_is_refused_at_load_time():
    cfg = cli.load_config_file("configs/kolmogorov_grpo.py")  # the GPU run's crash: cdv_cc needs 131 > 128
    c = cli.apply_overrides(cfg, ["rl.pattern=cdv_cc", "rl.cc_in_gradient=True"])
    with pytest.raises(ConfigError, match="rl.prompt_width=131"):
        kolmogorov_config(c.rl)
    k = kolmogorov_config(cli.apply_overrides(c, ["rl.prompt_width=131"]).rl)
    with pytest.raises(RolloutError):  # one byte more than the bound no longer fits
        encode_prompts([p + b"x" for p in longest_prompts(k, 96)], width=131)


def test_a_failing_arm_is_recorded_and_the_others_go_on(monkeypatch):
    """run_arms: an arm raising in its first step or in its training is recorded with its error, the others are
    trained for min(--grpo-s, their share) after every first step, and the table names the failure."""
    calls = []

    class FakeArm:
        def __init__(self, name, acfg, model, work, every):
            calls.append(("start", name))
            if name == "ccv":
                raise RuntimeError("boom at start")
            self.name, self.first_s = name, 1.0

        def train_and_score(self, seconds, max_steps, verifier, eval_sources, args, deadline):
            calls.append(("train", seconds))
            if self.name == "cqav":  # fails in its training
                raise RolloutError("a prompt of 131 tokens exceeds width=128")
            return {"steps": 3, "seconds": seconds, "first_step_s": 1.0, "curve": [], "loss_log": [],
                    "eval_episode": {"reward": 0.1, "fidelity": 0.5, "ratio": 0.5},
                    "hack": {"used": 1.0, "gate": 1.0, "signal": None, "copied_frac": None},
                    "heldout": {"bpb@0.5": 7.0, "bpb@0.9": 8.0, "success@0.5": 0.5, "success@0.9": 0.0,
                                "mean_best_chrf": 0.6, "mean_gain_of_best": 0.1}, "ac_bound_bpb": 6.0}

    monkeypatch.setattr(study, "Arm", FakeArm)
    args = type("A", (), {"eval_reserve_s": 0.0, "size": "tiny", "grpo_steps": 5, "grpo_s": 1.0})()
    results = {"arms": {}}
    study.run_arms(["cdv", "ccv", "cqav"], {"cdv": None, "ccv": None, "cqav": None}, None, None, [], args, None, study.Clock(1e9), results)
    assert calls == [("start", "cdv"), ("start", "ccv"), ("start", "cqav"), ("train", 1.0), ("train", 1.0)]
    assert "heldout" in results["arms"]["cdv"]
    assert results["arms"]["ccv"]["error"] == "RuntimeError: boom at start"
    assert results["arms"]["cqav"]["error"].startswith("RolloutError: a prompt of 131")
    results.update(params=1, data="d", device="cpu", wall_s=1.0, eval_sources=1, source_len=8, pretrained_ac_bpb=7.0,
                   baselines_bpb={"zlib": 9.0}, pretrain={"steps": 1, "seconds": 1.0, "valid_bpb": 8.0},
                   warm={"steps": 1, "seconds": 1.0, "before": {"fidelity": 0.1},
                         "after": {"fidelity": 0.2, "ratio": 1.0, "codec_exact": 0.0}})
    text = study.table(results)
    assert "| ccv | failed: RuntimeError: boom at start |" in text and "| cdv | 3 | 1.0 | 1.0 |" in text
