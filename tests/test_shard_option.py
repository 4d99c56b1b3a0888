"""`pytest --shard K/N` (tests/conftest.py): the N slices of one selection are disjoint and cover it, so a GPU run of
`-m gpu` split over device calls runs every test once (bench/run_gpu.sh gpu_tests with SHARD=K/N)."""
import os
import subprocess
import sys

FILES = ["tests/test_bench_parse_only.py", "tests/test_progress.py"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _collect(*extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "--co", "-q", "-o", "addopts=", "-p", "no:cacheprovider", *FILES, *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _ids(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_shards_are_disjoint_and_cover_the_selection():
    whole = _ids(_collect())
    assert len(whole) >= 4
    slices = [_ids(_collect("--shard", f"{k}/3")) for k in range(3)]
    assert all(slices), slices  # every slice gets some
    flat = [test for part in slices for test in part]
    assert sorted(flat) == sorted(whole)  # each test exactly once
    assert slices[0] == whole[0::3]  # every third from the first: a share of each file


def test_a_bad_shard_is_a_usage_error():
    for bad in ("3/3", "a/b"):  # K out of range; not two integers
        proc = _collect("--shard", bad)
        assert proc.returncode == 4, (bad, proc.returncode)  # pytest's usage-error exit code
        assert "--shard" in proc.stderr + proc.stdout
