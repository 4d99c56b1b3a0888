"""Multi-GPU scaling of the byte LM on one host, through the real entry points (python -m train.lm).

    NCCL_NVLS_ENABLE=0 python -m eval.bench_multi_gpu [--steps 30] [--gpus N]

Runs, each as its own process on the same global batch:
  1 GPU (CUDA_VISIBLE_DEVICES=0), then all N GPUs with data parallelism (mesh.data=N) and with FSDP
  (mesh.fsdp=N), for configs/lm_125m.py; then configs/lm_1b.py with FSDP on N GPUs;
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


def train_run(name, config, workdir, steps, mesh, env, timeout, extra=()):
    args = ["train.lm", "--config", config, "--workdir", str(workdir), f"train.steps={steps}",
            f"train.ckpt_every={steps}", *COMMON, *mesh, *extra]
    p = _run(args, env, timeout)
    lines = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()] if (Path(workdir) / "metrics.jsonl").exists() else []
    rates = [x for x in lines if "bytes_per_s" in x]
    if p.returncode != 0 or not rates:
        err = (p.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"name": name, "error": err}
    last = rates[-1]
    return {"name": name, "bytes_per_s": last["bytes_per_s"], "loss": last["loss"],
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
    ap.add_argument("--skip-1b", action="store_true")
    a = ap.parse_args(argv)
    base = {**os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONUNBUFFERED": "1"}
    n = a.gpus
    if not n:
        import jax

        n = jax.device_count()
    all_gpus = {**base, "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(n))}
    one_gpu = {**base, "CUDA_VISIBLE_DEVICES": "0"}
    cpu = {**base, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    root = Path(tempfile.mkdtemp(prefix="multi_gpu_"))
    rows = [
        train_run("125M, 1 GPU", "configs/lm_125m.py", root / "one", a.steps, ["mesh.data=1"], one_gpu, a.timeout),
        train_run(f"125M, {n} GPUs data parallel", "configs/lm_125m.py", root / "dp", a.steps, [f"mesh.data={n}"], all_gpus, a.timeout),
        train_run(f"125M, {n} GPUs FSDP", "configs/lm_125m.py", root / "fsdp", a.steps, ["mesh.data=1", f"mesh.fsdp={n}"], all_gpus, a.timeout),
    ]
    if not a.skip_1b:
        rows.append(train_run(f"~1B, {n} GPUs FSDP", "configs/lm_1b.py", root / "1b", max(a.steps // 2, 10),
                              ["mesh.data=1", f"mesh.fsdp={n}"], all_gpus, a.timeout))
    restore = {"written on": f"{n} GPUs FSDP", "1 GPU": bpb_of(root / "fsdp", one_gpu, a.timeout),
               "CPU": bpb_of(root / "fsdp", cpu, a.timeout)}
    print(json.dumps({"rows": rows, "restore": restore}, indent=1))
    one = rows[0].get("bytes_per_s")
    print()
    print("| run | bytes/s | bytes/s per GPU | scaling efficiency vs 1 GPU | device memory GiB (GPU 0) |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['name']} | error: {r['error']} | | | |")
            continue
        g = 1 if "1 GPU" in r["name"] else n
        eff = f"{100 * r['bytes_per_s'] / g / one:.0f}%" if one and "125M" in r["name"] else "-"
        print(f"| {r['name']} | {r['bytes_per_s']:,.0f} | {r['bytes_per_s'] / g:,.0f} | {eff} | {r['mem_gib']:.1f} |")
    for k in ("1 GPU", "CPU"):
        v = restore[k]
        print(f"| FSDP checkpoint restored on {k} | bpb {v.get('model_bpb', v.get('error'))} |")


if __name__ == "__main__":
    main()
