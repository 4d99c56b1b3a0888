"""Model FLOPs utilisation on two bases: the accelerator's spec dense bf16 peak, and a bf16 matmul
peak measured in the same run.

The spec figure is the one papers quote (MFU = model FLOP/s / datasheet peak); the measured one says
how close the model gets to what this device really does on a large matmul (clock, power and
thermals included). On an H200 the measured matmul peak is about 750 TFLOP/s against 989 spec, so
46% of the measured peak is 35% of spec: a figure without its basis is ambiguous.

``SPEC_BF16_TFLOPS``: dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, per
chip. ``spec_peak_tflops(device_kind)`` looks a ``jax.Device.device_kind`` up; None when unknown.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# (substrings that must all appear in the lower-cased device_kind, part name, dense bf16 TFLOP/s).
# First match wins: the specific variants (PCIe, NVL) come before the family name.
SPEC_BF16_TFLOPS: tuple[tuple[tuple[str, ...], str, float], ...] = (
    (("h100", "pcie"), "H100 PCIe", 756.0),
    (("h100", "nvl"), "H100 NVL", 835.0),
    (("gh200",), "GH200", 989.0),
    (("h200",), "H200", 989.0),
    (("h100",), "H100 SXM", 989.0),
    (("h800",), "H800 SXM", 989.0),
    (("a100",), "A100", 312.0),
    (("a800",), "A800", 312.0),
    (("l40s",), "L40S", 362.0),
    (("l4",), "L4", 121.0),
    (("a10g",), "A10G", 70.0),
    (("tpu v4",), "TPU v4", 275.0),
    (("tpu v5 lite",), "TPU v5e", 197.0),
    (("tpu v5p",), "TPU v5p", 459.0),
    (("tpu v6 lite",), "TPU v6e", 918.0),
)


def spec_part(device_kind: str) -> tuple[str, float] | None:
    """(part name, dense bf16 TFLOP/s) of a device kind such as "NVIDIA H100 80GB HBM3"; None if unknown."""
    kind = device_kind.lower()
    for needles, name, tflops in SPEC_BF16_TFLOPS:
        if all(n in kind for n in needles):
            return name, tflops
    return None


def spec_peak_tflops(device_kind: str | None = None) -> float | None:
    """Spec dense bf16 TFLOP/s of ``device_kind`` (default: the first local device); None when unknown."""
    if device_kind is None:
        device_kind = jax.local_devices()[0].device_kind
    part = spec_part(device_kind)
    return part[1] if part else None


def matmul_peak_tflops(n: int = 8192, reps: int = 20) -> float:
    """bf16 TFLOP/s of an n x n x n matmul on the default device, ``reps`` chained in one jitted loop
    (compiled and run once before timing)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16) / n

    @jax.jit
    def loop(a):
        return jax.lax.fori_loop(0, reps, lambda i, x: (x @ b).astype(jnp.bfloat16), a)

    loop(a).block_until_ready()
    t = time.perf_counter()
    loop(a).block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def device_peaks(measure: bool | None = None) -> dict[str, float]:
    """Per-device peaks for MFU: {"spec_tflops"} when the part is known, {"measured_tflops"} when measured
    (default: on accelerators only, where a 8192^3 bf16 matmul takes milliseconds; a CPU would take minutes)."""
    peaks = {}
    spec = spec_peak_tflops()
    if spec is not None:
        peaks["spec_tflops"] = spec
    if measure if measure is not None else jax.default_backend() != "cpu":
        if "tflops" not in _MEASURED:  # once per process: a study that trains several runs measures once
            _MEASURED["tflops"] = matmul_peak_tflops()
        peaks["measured_tflops"] = _MEASURED["tflops"]
    return peaks


_MEASURED: dict[str, float] = {}


def mfu_metrics(tflops_per_device: float, peaks: dict[str, float]) -> dict[str, float]:
    """{"mfu_spec", "mfu_measured"} (fractions) for the peaks that are known."""
    out = {}
    if peaks.get("spec_tflops"):
        out["mfu_spec"] = tflops_per_device / peaks["spec_tflops"]
    if peaks.get("measured_tflops"):
        out["mfu_measured"] = tflops_per_device / peaks["measured_tflops"]
    return out
