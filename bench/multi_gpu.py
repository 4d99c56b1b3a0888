"""Multi-GPU scaling of the byte LM on one host, through the real entry points (python -m train.lm).

    NCCL_NVLS_ENABLE=0 python -m bench.multi_gpu [--steps 30] [--gpus N]
    python -m bench.multi_gpu --small     # CPU check: tiny config, 2 virtual CPU devices

Runs, each as its own process on the same global batch:
  1 GPU (CUDA_VISIBLE_DEVICES=0), then all N GPUs with data parallelism (mesh.data=N) and with FSDP
  (mesh.fsdp=N), for configs/lm_125m.py, and data parallel at N times the global batch (weak scaling);
  then configs/lm_1b.py with FSDP on N GPUs and on 1 GPU (step time, peak memory);
  then the FSDP 125M checkpoint restored by eval.bpb on 1 GPU and on the CPU (equal bpb expected).
Throughput is the last logged window (after compilation). Prints a table last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COMMON = ["train.eval_every=100000", "train.sample_every=100000", "train.log_every=10"]


def _run(args: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=timeout)


def train_run(name, gpus, config, workdir, steps, mesh, env, timeout, extra=()):
    """One `python -m train.lm` process; its row (printed at once, so a cut-off run keeps what it measured)."""
    row = _train_run(name, config, workdir, steps, mesh, env, timeout, extra)
    row["gpus"] = gpus
    print(json.dumps(row), flush=True)
    return row


def _train_run(name, config, workdir, steps, mesh, env, timeout, extra):
    args = ["train.lm", "--config", config, "--workdir", str(workdir), f"train.steps={steps}",
            f"train.ckpt_every={steps}", *COMMON, *mesh, *extra]
    p = _run(args, env, timeout)
    lines = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()] if (Path(workdir) / "metrics.jsonl").exists() else []
    rates = [x for x in lines if "bytes_per_s" in x]
    if p.returncode != 0 or not rates:
        err = (p.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"name": name, "error": err}
    last = rates[-1]
    cfg = _load(config)
    batch = next((int(x.split("=")[1]) for x in extra if x.startswith("data.batch_size=")), cfg.data.batch_size)
    return {"name": name, "bytes_per_s": last["bytes_per_s"], "loss": last["loss"], "batch": batch,
            "seq_len": cfg.data.seq_len,
            "mem_gib": last.get("device_mem_gib", float("nan"))}


def bpb_of(workdir, env, timeout):
    p = _run(["eval.bpb", "--run", str(workdir), "--max-bytes", "65536", "--json"], env, timeout)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--gpus", type=int, default=0, help="GPUs to use (default: all visible)")
    ap.add_argument("--timeout", type=int, default=240)
    ap.add_argument("--config", default="configs/lm_125m.py")
    ap.add_argument("--config-1b", default="configs/lm_1b.py")
    ap.add_argument("--small", action="store_true", help="CPU check: lm_tiny on 2 virtual CPU devices")
    ap.add_argument("--parts", default="125m,1b", help="comma list: 125m (1 GPU, DP, FSDP, restore), 1b (FSDP, 1 GPU)")
    a = ap.parse_args(argv)
    base = {**os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONUNBUFFERED": "1"}
    cpu = {**base, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    if a.small:
        n, a.config, a.config_1b, a.steps = 2, "configs/lm_tiny.py", "configs/lm_tiny.py", min(a.steps, 20)
        all_gpus = {**cpu, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
        one_gpu = cpu
    else:
        n = a.gpus
        if not n:
            import jax

            n = jax.device_count()
        all_gpus = {**base, "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(n))}
        one_gpu = {**base, "CUDA_VISIBLE_DEVICES": "0"}
    root = Path(tempfile.mkdtemp(prefix="multi_gpu_"))
    parts = set(a.parts.split(","))
    rows, restore = [], {}
    dp, fsdp = [f"mesh.data={n}"], ["mesh.data=1", f"mesh.fsdp={n}"]
    if "125m" in parts:
        rows += [
            train_run("125M, 1 GPU", 1, a.config, root / "one", a.steps, ["mesh.data=1"], one_gpu, a.timeout),
            train_run(f"125M, {n} GPUs data parallel", n, a.config, root / "dp", a.steps, dp, all_gpus, a.timeout),
            train_run(f"125M, {n} GPUs FSDP", n, a.config, root / "fsdp", a.steps, fsdp, all_gpus, a.timeout),
            train_run(f"125M, {n} GPUs data parallel, {n}x global batch", n, a.config, root / "dp_weak", a.steps, dp,
                      all_gpus, a.timeout, extra=[f"data.batch_size={n * _batch(a.config)}"]),
        ]
        restore = {"1 GPU": bpb_of(root / "fsdp", one_gpu, a.timeout), "CPU": bpb_of(root / "fsdp", cpu, a.timeout)}
    if "1b" in parts:
        steps_1b = max(a.steps // 2, 20)  # >= 2 log windows: the last one is after compilation
        rows += [train_run(f"~1B, {n} GPUs FSDP", n, a.config_1b, root / "1b", steps_1b, fsdp, all_gpus, a.timeout),
                 train_run("~1B, 1 GPU", 1, a.config_1b, root / "1b_one", steps_1b, ["mesh.data=1", "mesh.fsdp=1"],
                           one_gpu, a.timeout)]
    print(json.dumps({"rows": rows, "restore": restore}, indent=1))
    one = rows[0].get("bytes_per_s") if "125m" in parts else None  # the 125M one-GPU baseline
    print()
    print("| run | global batch x T | step ms | bytes/s | bytes/s per GPU | scaling efficiency vs 1 GPU | peak memory GiB (GPU 0) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['name']} | error: {r['error']} | | | | | |")
            continue
        g = r["gpus"]
        eff = f"{100 * r['bytes_per_s'] / g / one:.0f}%" if one and r["name"].startswith("125M") else "-"
        print(f"| {r['name']} | {r['batch']} x {r['seq_len']} | {1e3 * r['batch'] * r['seq_len'] / r['bytes_per_s']:.0f} | "
              f"{r['bytes_per_s']:,.0f} | {r['bytes_per_s'] / g:,.0f} | {eff} | {r['mem_gib']:.1f} |")
    for k, v in restore.items():
        print(f"| {n}-GPU FSDP checkpoint restored on {k} | bpb {v.get('model_bpb', v.get('error'))} |")


def _batch(config: str) -> int:
    return _load(config).data.batch_size


def _load(config: str):
    from hqf_jax.cli import load_config_file

    return load_config_file(config)


if __name__ == "__main__":
    main()
