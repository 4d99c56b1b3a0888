"""Multi-process start-up: entry points call ``maybe_initialize`` before touching devices.

Launch one process per host (it drives all of that host's GPUs) or one per GPU, with

    JAX_COORDINATOR_ADDRESS=<host0>:<port>  JAX_NUM_PROCESSES=<n>  JAX_PROCESS_ID=<0..n-1>
    [JAX_LOCAL_DEVICE_IDS=<i,j,..>]  (the GPUs this process drives; default all it sees)

or inside a cluster that jax.distributed detects by itself (SLURM with several tasks, Open MPI).
Then ``jax.distributed.initialize`` joins the processes and ``jax.devices()`` lists every device
of every process, so the sharded loop (hqf_jax.trainer.loop) runs across hosts unchanged.
A single process (none of these set) is left alone. See docs/scale.md.
"""

from __future__ import annotations

import os

import jax

from hqf_jax.errors import ConfigError

ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _int_env(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} must be an integer") from None


def _in_multi_task_cluster() -> bool:
    def count(name):
        try:
            return int(os.environ.get(name, "1"))
        except ValueError:
            return 1

    return count("SLURM_NTASKS") > 1 or count("OMPI_COMM_WORLD_SIZE") > 1


def maybe_initialize(timeout_s: int = 300) -> bool:
    """Join the other processes when launched as several; True when running multi-process."""
    if jax.distributed.is_initialized():
        return True
    present = [v for v in ENV_VARS if os.environ.get(v)]
    if present and len(present) < len(ENV_VARS):
        missing = [v for v in ENV_VARS if v not in present]
        raise ConfigError(f"multi-process launch needs all of {', '.join(ENV_VARS)}; {', '.join(missing)} "
                          "is not set (unset them all to run as one process)")
    if not present and not _in_multi_task_cluster():
        return False
    kwargs = {}
    if present:
        n, i = _int_env("JAX_NUM_PROCESSES"), _int_env("JAX_PROCESS_ID")
        if not 0 <= i < n:
            raise ConfigError(f"JAX_PROCESS_ID={i} must be in [0, JAX_NUM_PROCESSES={n})")
        kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"], num_processes=n, process_id=i)
    try:
        jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)
    except Exception as e:  # coordinator unreachable, port taken, a process missing
        where = kwargs.get("coordinator_address", "the cluster's coordinator")
        raise ConfigError(f"jax.distributed could not start with {where} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); start every process within {timeout_s} s with the same "
                          "JAX_COORDINATOR_ADDRESS, reachable from all hosts") from None
    return True
