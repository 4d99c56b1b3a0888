"""Bad command lines and bad configs (issue 19, item 6): each is one line naming the key or option and
the fix, or it works: overrides anywhere among the options, ranges and divisibility checked at load,
eval.generate taking bytes, missing steps, read-only run folders, corrupt checkpoints."""

import errno
import os
import shutil
import subprocess
import sys

import pytest

from hqf_jax import cli, config_checks
from hqf_jax.errors import CheckpointError, ConfigError
from tests.helpers import ROOT, run_module

TINY = str(ROOT / "configs/lm_tiny.py")
# a 4-step run with checkpoints at steps 2 and 4 (seconds on a CPU); one layer: the command lines, prompt bytes,
# steps and folders checked here do not depend on the depth, the compiles do
SHORT = ["model.num_layers=1", "model.d_model=32", "model.qk_dim=32", "model.v_dim=64", "model.ffn_dim=64", "data.seq_len=32",
         "data.batch_size=4", "train.steps=4", "train.ckpt_every=2", "train.eval_every=100", "train.sample_every=100",
         "data.max_files=10", "train.sample_len=1", "train.eval_max_bytes=64"]


def _one_line(msg: str, *needles: str) -> None:
    assert "\n" not in msg.strip() and "Traceback" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from hqf_jax.trainer import lm_task
    from hqf_jax.trainer.loop import train

    workdir = tmp_path_factory.mktemp("run")
    cfg = cli.load_config(TINY, SHORT)
    task, _ = lm_task.build_task(cfg)
    train(task, cfg.train, cfg.mesh, workdir, cli.config_to_json(cfg), progress=False)
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    return workdir


# ---------------------------------------------------------------------- overrides anywhere


def test_overrides_on_both_sides_of_an_option(tmp_path):
    args, cfg = cli.parse_args("t", TINY, ["train.steps=3", "--workdir", str(tmp_path / "x"), "train.seed=1",
                                           "--config", TINY, "data.batch_size=2"])
    assert args.workdir == str(tmp_path / "x") and args.overrides == ["train.steps=3", "train.seed=1", "data.batch_size=2"]
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
    _one_line(r.stderr.strip().splitlines()[-1], "data.batch_size=0", ">= 1")
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
    _one_line(str(err.value), *needles)


@pytest.mark.parametrize("override,needles", [
    ("model.num_attention_heads=3", ["num_attention_heads=3", "hidden_size=128", "[1, 2, 4"]),
    ("model.num_key_value_heads=3", ["num_key_value_heads=3", "num_attention_heads=4", "[1, 2, 4]"]),
    ("tokenizer.vocab_size=0", ["tokenizer.vocab_size=0"]),
])
def test_token_lm_head_rules(override, needles):
    with pytest.raises(ConfigError) as err:
        cli.load_config(str(ROOT / "configs/token_lm_tiny.py"), [override])
    _one_line(str(err.value), *needles)


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


# ---------------------------------------------------------------------- eval.generate: bytes in, bytes out


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
        _one_line(str(err.value), needle)


def test_generate_refuses_negative_lengths_and_bad_prompt_files(tmp_path):
    from eval import generate, bpb

    with pytest.raises(ConfigError) as err:
        generate.main(["--run", str(tmp_path), "--max-bytes", "-5"])  # refused before the run is read
    _one_line(str(err.value), "--max-bytes -5", "0 or more")
    with pytest.raises(ConfigError) as err:
        generate.main(["--run", str(tmp_path), "--prompt-file", str(tmp_path / "missing.bin")])
    _one_line(str(err.value), "missing.bin", "readable file")
    with pytest.raises(SystemExit):
        generate.main(["--run", str(tmp_path), "--prompt", "a", "--prompt-file", str(tmp_path / "p")])
    with pytest.raises(ConfigError) as err:
        bpb.main(["--run", str(tmp_path), "--max-bytes", "-1"])
    _one_line(str(err.value), "--max-bytes -1")


def test_generate_prompt_file_bytes_in_bytes_out(run_dir, tmp_path, capsysbinary):
    from eval import generate
    from hqf_jax.nn.generate import stream
    from hqf_jax.trainer import lm_task

    prompt = bytes(range(256))[::-1][:40] + b"\x00\xff\xfe"  # not UTF-8, with NUL
    (tmp_path / "p.bin").write_bytes(prompt)
    generate.main(["--run", str(run_dir), "--prompt-file", str(tmp_path / "p.bin"), "--max-bytes", "6", "--seed", "3"])
    out = capsysbinary.readouterr().out
    model, _, _ = lm_task.load_run(run_dir)
    want = bytes(stream(model, prompt, 6, 3, 0.8, 0, 0.95))
    assert out == prompt + want + b"\n"
    assert generate.prompt_bytes(r"\x00\xffA", None) == b"\x00\xffA"  # --prompt: escapes read (end to end below)


def test_generate_cli_with_non_utf8_argv(run_dir):
    """A real process whose argv is not valid UTF-8 (bytes straight from a shell), plus an escape."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "eval.generate", "--run", str(run_dir), "--prompt", b"\xff\xc3(\\x00z",
                        "--max-bytes", "4"], cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert r.stdout.startswith(b"\xff\xc3(\x00z") and r.stdout.endswith(b"\n")


# ---------------------------------------------------------------------- run folders and checkpoints


def test_missing_step_lists_the_saved_ones(run_dir):
    from eval import bpb

    with pytest.raises(CheckpointError) as err:
        bpb.main(["--run", str(run_dir), "--step", "7"])
    _one_line(str(err.value), "no step 7", "saved steps: [2, 4]")
    assert "unreadable" not in str(err.value) and "move that folder" not in str(err.value)


def _read_only(monkeypatch, only=None):
    """Fault injection: writes to the folders under test fail as on a read-only mount (EROFS); the check
    probes by creating a file, which is what fails there (root ignores permission bits, so chmod cannot
    stand in for a read-only file system in CI)."""
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **kw):
        if only is None or str(dir).endswith(only):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(cli.tempfile, "mkstemp", mkstemp)


def test_read_only_new_run_folder_is_one_line(tmp_path, monkeypatch):
    from train import lm

    _read_only(monkeypatch)
    with pytest.raises(ConfigError) as err:
        lm.main(["--workdir", str(tmp_path / "new" / "run"), *SHORT])
    _one_line(str(err.value), "new/run", "Read-only file system", "--workdir on a writable disk")
    assert not (tmp_path / "new").exists()


def test_read_only_existing_run_and_its_tensorboard_folder(run_dir, tmp_path, monkeypatch):
    from train import lm

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert (run / "tb").is_dir()
    _read_only(monkeypatch, only="tb")  # the run folder is writable, its tensorboard folder is not
    with pytest.raises(ConfigError) as err:
        lm.main(["--workdir", str(run), *SHORT])
    _one_line(str(err.value), str(run / "tb"), "Read-only file system")
    monkeypatch.undo()
    _read_only(monkeypatch)
    with pytest.raises(ConfigError) as err:
        lm.main(["--workdir", str(run), *SHORT])
    _one_line(str(err.value), str(run), "--workdir on a writable disk")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through permission bits")
def test_unwritable_folder_without_injection(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="cannot be written"):
            cli.check_writable(locked / "run")
    finally:
        locked.chmod(0o755)


def test_run_folder_under_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError) as err:
        cli.check_writable(tmp_path / "f" / "run")
    _one_line(str(err.value), "is a file")


def test_corrupt_checkpoint_message_has_no_object_reprs(run_dir, tmp_path):
    """Half of every array file of step 4 cut off: tensorstore's error carries a pybind11 bound-method repr
    of the whole TensorStore spec; the message keeps its cause (the array, the byte range) on one line."""
    from hqf_jax.trainer import lm_task

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    data = [f for f in (run / "checkpoints" / "4").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert data
    for f in data:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        lm_task.load_run(run)
    msg = str(err.value)
    _one_line(msg, "step 4", "checkpoints/4")
    for junk in ("pybind11", "<bound method", "object at 0x", "TensorStore({"):
        assert junk not in msg, msg
    assert len(msg) < 900


def test_short_cuts_reprs_and_keeps_the_root_cause():
    from hqf_jax.trainer.checkpoint import _short

    try:
        try:
            raise ValueError('OUT_OF_RANGE: Error reading "params.w/0.0"')
        except ValueError as inner:
            raise Exception("Encountered error. See full TensorStore details: <bound method pybind11_x.spec of "
                            "TensorStore({\n 'driver': 'zarr'})>") from inner
    except Exception as e:
        text = _short(e)
    assert 'ValueError: OUT_OF_RANGE: Error reading "params.w/0.0"' in text and "\n" not in text
    assert "pybind11" not in text and "TensorStore({" not in text
    assert "object at 0x" not in _short(RuntimeError("bad <foo.Bar object at 0x7f00> here"))


# ---------------------------------------------------------------------- python -m serve


def test_serve_cli_serves_a_run_and_stops_cleanly(run_dir, tmp_path):
    """`python -m serve --run RUN --port 0` as a user starts it: it prints its address, answers /health and a
    completion of exactly max_tokens bytes over real HTTP, and ends on SIGINT with exit 0."""
    import http.client
    import json
    import signal

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "serve", "--run", str(run_dir), "--port", "0", "--slots", "2",
                          "--chunk", "4", "--dtype", "float32"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=(tmp_path / "stderr.txt").open("w"), text=True)  # a file: a full pipe cannot block it
    err = lambda: (tmp_path / "stderr.txt").read_text()[-2000:]  # noqa: E731
    try:
        line = p.stdout.readline()  # after the warm-up compiles
        assert line.startswith(f"serving {run_dir} on http://127.0.0.1:"), (line, err())
        host, port = line.split("http://")[1].split()[0].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        conn.request("GET", "/health")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())
        body = json.dumps({"prompt": "def ", "max_tokens": 5, "temperature": 0.0})
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        out = json.loads(r.read())
        assert r.status == 200 and out["usage"]["completion_tokens"] == 5 and isinstance(out["choices"][0]["text"], str)
    finally:
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=60)
    assert rc == 0, err()


def test_serve_cli_missing_run_is_one_line(tmp_path):
    r = run_module("serve", "--run", str(tmp_path / "nope"), "--port", "0")
    assert r.returncode == 2, r.stderr[-2000:]
    _one_line(r.stderr, "nope")
