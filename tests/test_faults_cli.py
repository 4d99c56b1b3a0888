"""Bad command lines and bad configs (issue 19, item 6): each is refused in one line naming the key or option
and the fix, or it works. Overrides anywhere among the options; ranges and divisibility checked at load, in every
config and every train entry point, before a folder is made; eval.generate's byte escapes (cli.unescape_bytes)
and eval.generate's and eval.bpb's refusals of bad arguments. The tools on a trained run (bytes in/out, missing
steps, read-only folders, corrupt checkpoints, serve): tests/test_faults_runs.py."""

import os

import pytest

from hqf_jax import cli, config_checks
from hqf_jax.errors import ConfigError
from tests.helpers import ROOT, assert_one_line, run_module

TINY = str(ROOT / "configs/lm_tiny.py")

# ---------------------------------------------------------------------- overrides anywhere


def test_overrides_on_both_sides_of_an_option(tmp_path):
    args, cfg = cli.parse_args("t", TINY, ["train.steps=3", "--workdir", str(tmp_path / "x"), "train.seed=1",
                                           "--config", TINY, "data.batch_size=2"])
    assert args.workdir == str(tmp_path / "x")
    assert args.overrides == ["train.steps=3", "train.seed=1", "data.batch_size=2"]
    assert (cfg.train.steps, cfg.train.seed, cfg.data.batch_size) == (3, 1, 2)
    assert not (tmp_path / "x").exists()  # parsing (and the writability probe) creates nothing


def test_intermixed_parse_keeps_required_groups_and_unknown_options():
    import argparse

    p = argparse.ArgumentParser()
    g = p.add_mutually_exclusive_group(required=True)  # the shape of eval.kolmogorov_eval's parser
    g.add_argument("--run")
    g.add_argument("--config")
    cli.add_overrides(p)
    a = cli.parse(p, ["a.b=1", "--config", "c.py", "c.d=2"])
    assert a.config == "c.py" and a.overrides == ["a.b=1", "c.d=2"]
    with pytest.raises(SystemExit):
        cli.parse(p, ["a.b=1"])  # the group is still required
    with pytest.raises(SystemExit):
        cli.parse(p, ["--config", "c.py", "--nope", "a.b=1"])


def test_train_lm_takes_overrides_after_an_option_and_validates_them(tmp_path):
    """The issue's command line, ending in a bad value: parsed (no 'unrecognized arguments'), then
    refused at load in one line, before any data is read or any folder made."""
    r = run_module("train.lm", "--config", "configs/lm_tiny.py", "train.steps=3", "--workdir", str(tmp_path / "x"),
                   "train.seed=1", "data.batch_size=0", timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert_one_line(r.stderr.strip().splitlines()[-1], "data.batch_size=0", ">= 1")
    assert "unrecognized" not in r.stderr and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------- config validation


@pytest.mark.parametrize("override,needles", [
    ("data.batch_size=0", ["data.batch_size=0", ">= 1"]),
    ("data.seq_len=0", ["data.seq_len=0", ">= 1"]),
    ("train.ckpt_every=0", ["train.ckpt_every=0", "train.ckpt_every=1 or more"]),
    ("train.sample_every=0", ["train.sample_every=0", "train.sample_every=1 or more"]),
    ("train.eval_every=0", ["train.eval_every=0"]),
    ("train.log_every=0", ["train.log_every=0"]),
    ("train.steps=0", ["train.steps=0"]),
    ("data.batch_size=-4", ["data.batch_size=-4", ">= 1"]),
    ("train.keep=0", ["train.keep=0", ">= 1"]),
    ("train.warmup_steps=-1", ["train.warmup_steps=-1", ">= 0"]),
    ("train.lr=0.0", ["train.lr=0.0", "> 0"]),
    ("train.b2=1.0", ["train.b2=1.0", "[0, 1)"]),
    ("data.valid_fraction=1.5", ["data.valid_fraction=1.5", "[0, 1]"]),
    # qk_dim 64, v_dim 128 (lm_tiny): 3 heads divide neither; the message lists head counts that fit
    ("model.num_heads=3", ["model.num_heads=3", "multiples of num_heads", "[1, 2, 4, 8, 16, 32]"]),
    ("model.num_heads=0", ["model.num_heads=0", ">= 1"]),
    ("model.num_heads=64", ["model.num_heads=64", "even"]),  # head size 1: rotary positions need pairs
])
def test_bad_values_are_one_line_naming_key_and_fix(override, needles):
    with pytest.raises(ConfigError) as err:
        cli.load_config(TINY, [override])
    assert_one_line(str(err.value), *needles)


@pytest.mark.parametrize("override,needles", [
    ("model.num_attention_heads=3", ["num_attention_heads=3", "hidden_size=128", "[1, 2, 4"]),
    ("model.num_key_value_heads=3", ["num_key_value_heads=3", "num_attention_heads=4", "[1, 2, 4]"]),
    ("tokenizer.vocab_size=0", ["tokenizer.vocab_size=0"]),
])
def test_token_lm_head_rules(override, needles):
    with pytest.raises(ConfigError) as err:
        cli.load_config(str(ROOT / "configs/token_lm_tiny.py"), [override])
    assert_one_line(str(err.value), *needles)


def test_every_shipped_config_passes():
    names = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py")
    assert len(names) > 10
    for path in names:
        config_checks.check(cli.load_config_file(str(path)))


def test_rules_name_only_keys_some_config_has():
    """A typo in the rule table would silently check nothing: every key is in at least one config."""
    def keys(d, pre=""):
        for k, v in d.items():
            yield from keys(v, f"{pre}{k}.") if isinstance(v, dict) else [pre + k]

    known = set()
    for path in (ROOT / "configs").glob("*.py"):
        if path.name != "__init__.py":
            known |= set(keys(cli.load_config_file(str(path)).to_dict()))
    rules = (config_checks.POSITIVE_INTS + config_checks.NON_NEGATIVE_INTS + config_checks.POSITIVE_NUMBERS
             + config_checks.NON_NEGATIVE_NUMBERS + tuple(config_checks.FRACTIONS))
    assert sorted(set(rules) - known) == []


@pytest.mark.parametrize("module,config,override", [
    ("train.lm", "configs/lm_tiny.py", "train.ckpt_every=0"),
    ("train.grpo", "configs/grpo_tiny.py", "rl.group_size=0"),
    ("train.holo", "configs/holo_tiny.py", "train.batch_size=0"),
    ("train.retnphi", "configs/retnphi_tiny.py", "train.keep=0"),
    ("train.token_lm", "configs/token_lm_tiny.py", "data.seq_len=0"),
])
def test_every_train_entry_point_validates_at_load(tmp_path, module, config, override):
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        main(["--workdir", str(tmp_path / "w"), override, "--config", str(ROOT / config)])
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------- eval arguments: byte escapes, refusals


def test_unescape_bytes():
    u = cli.unescape_bytes
    assert u(r"\x00\xff") == b"\x00\xff"
    assert u(r"a\nb\tc\\d\0") == b"a\nb\tc\\d\x00"
    assert u(r"\377\101") == b"\xffA"
    assert u(r"C:\dir") == b"C:\\dir"  # an unknown escape stays as written, as in a python literal
    assert u("héllo") == "héllo".encode()
    assert u(os.fsdecode(b"\xff\xfeab")) == b"\xff\xfeab"  # argv that is not UTF-8 comes back byte for byte
    for bad, needle in ((r"\x4", "two hex digits"), ("a\\", "lone backslash"), (r"\400", "above")):
        with pytest.raises(ConfigError) as err:
            u(bad)
        assert_one_line(str(err.value), needle)


def test_generate_refuses_negative_lengths_and_bad_prompt_files(tmp_path):
    from eval import generate, bpb

    with pytest.raises(ConfigError) as err:
        generate.main(["--run", str(tmp_path), "--max-bytes", "-5"])  # refused before the run is read
    assert_one_line(str(err.value), "--max-bytes -5", "0 or more")
    with pytest.raises(ConfigError) as err:
        generate.main(["--run", str(tmp_path), "--prompt-file", str(tmp_path / "missing.bin")])
    assert_one_line(str(err.value), "missing.bin", "readable file")
    with pytest.raises(SystemExit):
        generate.main(["--run", str(tmp_path), "--prompt", "a", "--prompt-file", str(tmp_path / "p")])
    with pytest.raises(ConfigError) as err:
        bpb.main(["--run", str(tmp_path), "--max-bytes", "-1"])
    assert_one_line(str(err.value), "--max-bytes -1")
