"""The tools on a trained run and its folders (issue 19, item 6), against a 4-step run trained once for the
file: eval.generate takes bytes and gives bytes back (a prompt file, argv that is not UTF-8); a missing step
lists the saved ones; read-only, unwritable or file-blocked run folders and a corrupt checkpoint are one line
without object reprs; `python -m serve` serves the run over HTTP and stops cleanly, and refuses a missing run in
one line. Command lines and configs: tests/test_faults_cli.py."""

import errno
import os
import shutil
import subprocess
import sys

import pytest

from hqf_jax import cli
from hqf_jax.errors import CheckpointError, ConfigError
from tests.helpers import ROOT, assert_one_line, run_module

TINY = str(ROOT / "configs/lm_tiny.py")
# a 4-step run with checkpoints at steps 2 and 4 (seconds on a CPU); one layer: the command lines, prompt bytes,
# steps and folders checked here do not depend on the depth, the compiles do
SHORT = ["model.num_layers=1", "model.d_model=32", "model.qk_dim=32", "model.v_dim=64", "model.ffn_dim=64",
         "data.seq_len=32", "data.batch_size=4", "train.steps=4", "train.ckpt_every=2", "train.eval_every=100",
         "train.sample_every=100", "data.max_files=10", "train.sample_len=1", "train.eval_max_bytes=64"]


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


# ---------------------------------------------------------------------- eval.generate: bytes in, bytes out


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
    assert_one_line(str(err.value), "no step 7", "saved steps: [2, 4]")
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
    assert_one_line(str(err.value), "new/run", "Read-only file system", "--workdir on a writable disk")
    assert not (tmp_path / "new").exists()


def test_read_only_existing_run_and_its_tensorboard_folder(run_dir, tmp_path, monkeypatch):
    from train import lm

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert (run / "tb").is_dir()
    _read_only(monkeypatch, only="tb")  # the run folder is writable, its tensorboard folder is not
    with pytest.raises(ConfigError) as err:
        lm.main(["--workdir", str(run), *SHORT])
    assert_one_line(str(err.value), str(run / "tb"), "Read-only file system")
    monkeypatch.undo()
    _read_only(monkeypatch)
    with pytest.raises(ConfigError) as err:
        lm.main(["--workdir", str(run), *SHORT])
    assert_one_line(str(err.value), str(run), "--workdir on a writable disk")


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
    assert_one_line(str(err.value), "is a file")


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
    assert_one_line(msg, "step 4", "checkpoints/4")
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
        assert "; ready in " in line and "engine built in " in err()  # the start-up, said while it happens
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
    assert_one_line(r.stderr, "nope")
