"""Multi-process start-up: entry points call ``maybe_initialize`` before touching devices.

When the launcher sets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or the
cluster environment jax.distributed auto-detects: SLURM, Open MPI, Cloud TPU), this calls
``jax.distributed.initialize`` so the same sharded code runs across hosts.
"""

from __future__ import annotations

import os

import jax


def maybe_initialize() -> bool:
    addr = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not addr and "SLURM_JOB_ID" not in os.environ and "OMPI_COMM_WORLD_SIZE" not in os.environ:
        return False
    kwargs = {}
    if addr:
        kwargs = dict(coordinator_address=addr, num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)
    return True
