"""Multi-GPU scaling ladder of the byte LM on one host (issues 8 and 21), through the real entry points: every row is
its own `python -m train.lm` process (several for the jax.distributed row), timed by its own logged throughput.

    NCCL_NVLS_ENABLE=0 python -m bench.multi_gpu [--gpus 1,2,4,8] [--parts 125m,1b,pallas,procs] [--steps 30]
    python -m bench.multi_gpu --small        # CPU check: lm_tiny on 1, 2 and 4 virtual CPU devices

Parts (N runs over --gpus, 1 excluded; "max" is the largest N; a 10-minute device call fits one part at 8 GPUs):
  125m    1 GPU; data parallel on N GPUs at the 1-GPU global batch (strong scaling) and at N x it (weak scaling);
          FSDP on max GPUs, whose checkpoint eval.bpb restores on 1 GPU and on the CPU (equal bpb expected)
  1b      ~1B on 1 GPU, FSDP on N GPUs, FSDP x tensor parallel (fsdp=max/2, tensor=2) on max GPUs
  pallas  125M with model.form=pallas (the retention kernel per shard): 1 GPU, data parallel, FSDP and FSDP x tensor
          parallel on max GPUs
  procs   max processes of one GPU each, joined by jax.distributed on localhost (the stand-in for several hosts),
          FSDP over all of them; the checkpoint restored on 1 GPU and scored by eval.bpb
Scaling efficiency = bytes/s / (GPUs x the same model's and form's 1-GPU bytes/s in this run); FSDP x TP is also
given as a ratio to FSDP alone on as many GPUs. Each row is printed as JSON when it ends (a cut-off run keeps what it
measured), the table last.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

COMMON = ["train.eval_every=100000", "train.sample_every=100000", "train.log_every=10"]


def _run(args: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=timeout)


def _args(config, workdir, steps, mesh, extra):
    return ["train.lm", "--config", config, "--workdir", str(workdir), f"train.steps={steps}",
            f"train.ckpt_every={steps}", *COMMON, *mesh, *extra]


def train_run(name, gpus, config, workdir, steps, mesh, env, timeout, extra=(), base=None):
    """One `python -m train.lm` process; its row (printed at once). base: the key of the 1-GPU row it scales from."""
    p = _run(_args(config, workdir, steps, mesh, extra), env, timeout)
    return _row(name, gpus, config, workdir, extra, base, p.returncode, p.stderr)


def procs_run(name, n, config, workdir, steps, mesh, envs, timeout, extra=(), base=None):
    """n `python -m train.lm` processes joined by jax.distributed on localhost (envs[i]: process i's environment)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-m", *_args(config, workdir, steps, mesh, extra)],
                              env={**e, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(n),
                                   "JAX_PROCESS_ID": str(i)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for i, e in enumerate(envs)]
    errs, rc = [], 0
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        errs.append(err or "")
        rc = rc or p.returncode
    return _row(name, n, config, workdir, extra, base, rc, next((e for e in errs if e.strip()), ""))


def _row(name, gpus, config, workdir, extra, base, rc, stderr):
    path = Path(workdir) / "metrics.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    rates = [x for x in lines if "bytes_per_s" in x]
    if rc != 0 or not rates:
        row = {"name": name, "gpus": gpus, "error": (stderr.strip().splitlines() or ["no output"])[-1][:200]}
    else:
        last, cfg = rates[-1], _load(config)
        batch = next((int(x.split("=")[1]) for x in extra if x.startswith("data.batch_size=")), cfg.data.batch_size)
        row = {"name": name, "gpus": gpus, "bytes_per_s": last["bytes_per_s"], "loss": last["loss"], "batch": batch,
               "seq_len": cfg.data.seq_len, "mem_gib": last.get("device_mem_gib", float("nan")), "base": base}
    print(json.dumps(row), flush=True)
    return row


def bpb_of(workdir, env, timeout):
    p = _run(["eval.bpb", "--run", str(workdir), "--max-bytes", "65536", "--json"], env, timeout)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def efficiency(rows: list[dict]) -> dict[str, float]:
    """name -> bytes/s / (gpus x the 1-GPU bytes/s of the row's base), for rows whose base row ran."""
    one = {r["base"]: r["bytes_per_s"] for r in rows if r.get("gpus") == 1 and "bytes_per_s" in r}
    return {r["name"]: r["bytes_per_s"] / (r["gpus"] * one[r["base"]]) for r in rows
            if "bytes_per_s" in r and r.get("base") in one and r["gpus"] > 1}


def table(rows: list[dict], restore: dict) -> str:
    eff = efficiency(rows)
    out = ["| run | GPUs | global batch x T | step ms | bytes/s | bytes/s per GPU | scaling efficiency vs 1 GPU | "
           "peak memory GiB (GPU 0) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['name']} | {r['gpus']} | error: {r['error']} | | | | | |")
            continue
        e = f"{100 * eff[r['name']]:.0f}%" if r["name"] in eff else "-"
        out.append(f"| {r['name']} | {r['gpus']} | {r['batch']} x {r['seq_len']} | "
                   f"{1e3 * r['batch'] * r['seq_len'] / r['bytes_per_s']:.0f} | {r['bytes_per_s']:,.0f} | "
                   f"{r['bytes_per_s'] / r['gpus']:,.0f} | {e} | {r['mem_gib']:.1f} |")
    for k, v in restore.items():
        out.append(f"| {k} | bpb {v.get('model_bpb', v.get('error'))} | | | | | | |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--gpus", default="", help="comma list of GPU counts (default: 1,2,4,.. up to all visible)")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per process")
    ap.add_argument("--config", default="configs/lm_125m.py")
    ap.add_argument("--config-1b", default="configs/lm_1b.py")
    ap.add_argument("--small", action="store_true", help="CPU check: lm_tiny on 1, 2 and 4 virtual CPU devices")
    ap.add_argument("--parts", default="125m,1b", help="comma list of 125m, 1b, pallas, procs")
    a = ap.parse_args(argv)
    base = {**os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONUNBUFFERED": "1"}
    cpu = {**base, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    if a.small:
        ladder = [int(g) for g in (a.gpus or "1,2,4").split(",")]
        a.config, a.config_1b, a.steps = "configs/lm_tiny.py", "configs/lm_tiny.py", min(a.steps, 20)
        flags = os.environ.get("XLA_FLAGS", "")
        on = lambda n: {**cpu, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={n}".strip()}  # noqa: E731
        one_each = lambda i: on(1)  # noqa: E731
    else:
        if a.gpus:
            ladder = [int(g) for g in a.gpus.split(",")]
        else:
            import jax

            ladder = [g for g in (1, 2, 4, 8, 16) if g <= jax.device_count()]
        on = lambda n: {**base, "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(n)))}  # noqa: E731
        one_each = lambda i: {**base, "CUDA_VISIBLE_DEVICES": str(i)}  # noqa: E731
    ns, big = [n for n in ladder if n > 1], max(ladder)
    root = Path(tempfile.mkdtemp(prefix="multi_gpu_"))
    parts = set(a.parts.split(","))
    rows, restore = [], {}
    fsdp = lambda n: ["mesh.data=1", f"mesh.fsdp={n}"]  # noqa: E731
    fsdp_tp = ["mesh.data=1", f"mesh.fsdp={big // 2}", "mesh.tensor=2"]
    if "125m" in parts:
        rows.append(train_run("125M, 1 GPU", 1, a.config, root / "one", a.steps, ["mesh.data=1"], on(1), a.timeout,
                              base="125m"))
        for n in ns:
            rows.append(train_run(f"125M, data parallel, {n} GPUs", n, a.config, root / f"dp{n}", a.steps,
                                  [f"mesh.data={n}"], on(n), a.timeout, base="125m"))
            rows.append(train_run(f"125M, data parallel, {n} GPUs, {n}x global batch", n, a.config, root / f"dpw{n}",
                                  a.steps, [f"mesh.data={n}"], on(n), a.timeout,
                                  extra=[f"data.batch_size={n * _batch(a.config)}"], base="125m"))
        if ns:
            rows.append(train_run(f"125M, FSDP, {big} GPUs", big, a.config, root / "fsdp", a.steps, fsdp(big), on(big),
                                  a.timeout, base="125m"))
            restore = {f"{big}-GPU FSDP checkpoint restored on 1 GPU": bpb_of(root / "fsdp", on(1), a.timeout),
                       f"{big}-GPU FSDP checkpoint restored on the CPU": bpb_of(root / "fsdp", cpu, a.timeout)}
    if "1b" in parts:
        steps_1b = max(a.steps // 2, 20)  # >= 2 log windows: the last one is after compilation
        rows.append(train_run("~1B, 1 GPU", 1, a.config_1b, root / "1b_one", steps_1b, fsdp(1), on(1), a.timeout,
                              base="1b"))
        for n in ns:
            rows.append(train_run(f"~1B, FSDP, {n} GPUs", n, a.config_1b, root / f"1b{n}", steps_1b, fsdp(n), on(n),
                                  a.timeout, base="1b"))
        if big >= 4:
            rows.append(train_run(f"~1B, FSDP x TP ({big // 2}x2), {big} GPUs", big, a.config_1b, root / "1b_tp",
                                  steps_1b, fsdp_tp, on(big), a.timeout, base="1b"))
    if "pallas" in parts:
        pk = ["model.form=pallas"]
        rows.append(train_run("125M pallas, 1 GPU", 1, a.config, root / "pk_one", a.steps, ["mesh.data=1"], on(1),
                              a.timeout, extra=pk, base="pallas"))
        meshes = [(f"data parallel, {big} GPUs", [f"mesh.data={big}"]), (f"FSDP, {big} GPUs", fsdp(big))]
        meshes += [(f"FSDP x TP ({big // 2}x2), {big} GPUs", fsdp_tp)] if big >= 4 else []
        for i, (label, mesh) in enumerate(meshes if ns else []):
            rows.append(train_run(f"125M pallas, {label}", big, a.config, root / f"pk{i}", a.steps, mesh, on(big),
                                  a.timeout, extra=pk, base="pallas"))
    if "procs" in parts and ns:
        rows.append(procs_run(f"125M, FSDP, {big} processes x 1 GPU (jax.distributed)", big, a.config, root / "procs",
                              a.steps, fsdp(big), [one_each(i) for i in range(big)], a.timeout, base="125m"))
        restore[f"{big}-process checkpoint restored on 1 GPU"] = bpb_of(root / "procs", on(1), a.timeout)
    print(json.dumps({"rows": rows, "restore": restore}, indent=1))
    print()
    print(table(rows, restore))
    for line in tp_ratios(rows):
        print(line)
    return rows, restore


def tp_ratios(rows: list[dict]) -> list[str]:
    """FSDP x TP against FSDP alone of the same model and form on as many GPUs (the issue's aim: within 10%)."""
    out = []
    for r in rows:
        if "FSDP x TP" not in r["name"] or "bytes_per_s" not in r:
            continue
        model = r["name"].split(",")[0]
        alone = next((x for x in rows if x.get("gpus") == r["gpus"] and "bytes_per_s" in x
                      and x["name"].startswith(f"{model}, FSDP, ")), None)
        if alone:
            out.append(f"{r['name']}: {r['bytes_per_s'] / alone['bytes_per_s']:.2f}x FSDP alone on {r['gpus']} GPUs")
    return out


def _batch(config: str) -> int:
    return _load(config).data.batch_size


def _load(config: str):
    from hqf_jax.cli import load_config_file

    return load_config_file(config)


if __name__ == "__main__":
    main()
