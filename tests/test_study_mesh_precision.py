"""studies.mesh_precision on 4 virtual CPU devices: every arm (tensor parallel with the Pallas kernel
in interpret mode too) trains the same float32 losses as one device, up to summation order."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.study  # the study's tiny end-to-end run (as the other studies'): CI keeps the property itself in
# test_sharding.py::test_pallas_kernel_runs_per_shard_inside_the_sharded_step (the Pallas kernel per shard on a
# (2, 2, 2) mesh trains the 1-device losses) and the chunkwise form's meshes in the same file
def test_every_mesh_trains_the_one_device_losses_in_float32(tmp_path):
    # the Pallas form (interpret mode on the CPU) inside shard_map
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "studies.mesh_precision", "--steps", "4", "--dtypes", "float32",
           "--out", str(tmp_path), "data.max_files=8", "data.batch_size=8", "data.seq_len=64",
           "model.d_model=32", "model.num_layers=1", "model.num_heads=4", "model.qk_dim=32", "model.v_dim=64",
           "model.ffn_dim=64", "model.chunk_size=32", "model.form=pallas"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())["losses"]["float32"]
    assert set(res) == {"1", "1 permuted rows", "data parallel", "fsdp", "tensor parallel"}
    ref = res["1"]["losses"]
    assert len(ref) == 4
    for arm, r in res.items():
        assert max(abs(a - b) for a, b in zip(r["losses"], ref)) < 1e-4, (arm, r["losses"], ref)
    assert (tmp_path / "table.md").exists() and (tmp_path / "mesh_precision.png").exists()


def test_an_unknown_arm_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "studies.mesh_precision", "--arms", "pipeline", "--out", str(tmp_path)],
                       cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown arm" in r.stderr and "Traceback" not in r.stderr
