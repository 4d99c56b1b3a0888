"""The first level of the quantized-matmul dispatcher: which layout (and so which kernel family) a layer's weight is
stored in. The second level picks the form inside the family by batch: ROUTES (routes.py) for the Triton forms on
the PackedWeight, the weight's plan for the Hopper form (mosaic_layout.py).

    form = layout_form("int", 4, k=4096, n=11008, batch=16, on_hopper=True)    # "mosaic" | "triton"

A layer is stored once (two layouts would double its bytes), so the choice is made when the model is quantized,
for the decode batch the caller names (the engine's `batch`, the server's slots). The Hopper layout takes 4-bit
int, int8, NF4 and the 4-bit φ-grid (phi4), on a Hopper GPU only (Mosaic GPU lowers for sm_90a only); a row names
the code width it was measured at.
"""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class Layout:
    method: str  # "int" | "nf4" | "phi" | "*"
    min_batch: int  # the row holds for decode batch >= min_batch
    form: str  # "mosaic": the Hopper layout (MosaicWeight); "triton": the PackedWeight (ROUTES picks by batch)
    min_shape: tuple[int, int] = (0, 0)  # (K, N): the row holds where in features >= K and out features >= N
    bits: int = 4  # code width (a φ-grid's index bits); "*" rows hold for any


# Measured on one H200 (jax 0.11.2), 2026-11-30, docs/BENCHMARKS.md "The Hopper kernel": `python -m
# bench.quant_mosaic` (kernel against the same-run bf16 XLA matmul and the ROUTES kernel) and `python -m
# bench.generate --quant-impls pallas,mosaic` (whole decode steps). The first row whose method, batch and shape
# hold wins.
LAYOUTS: tuple[Layout, ...] = (
    # int4 at K, N >= 4096: Hopper 2.42x bf16 at batch 1 on 4096x11008 (Triton GEMV 2.29x), 1.54-1.77x at batch
    # 16-64 on 4096x11008 / 11008x4096 (Triton tc 0.22-0.51x); 4096x4096 batch 1 1.34-1.43x (two runs) vs the
    # GEMV's 1.54x (the one cell the Triton form wins), batch 8-16 1.18-1.25x (Triton 0.59-0.63x). Batch 256:
    # 0.58-0.72x bf16 (Triton 0.17-0.24x): neither form beats bf16 there. 4096x4096 batch 32 / 64 (stop 28): 1.25x
    # / 1.28x (Triton 0.51x at 32). Stop 32, one process: 4096x4096 batch 1 Hopper 1.44x vs the GEMV's 1.67x, so
    # exactly that shape keeps the GEMV at batch 1 (batches 2-3 not measured: the Hopper form from 2, as at 4,
    # 1.03x vs Triton tc 0.57x); any wider one (4096x11008, 11008x4096 measured; others not) takes the Hopper
    # form from batch 1, as every shape from 4096 did before.
    Layout("int", 1, "mosaic", (4096, 4097)),
    Layout("int", 1, "mosaic", (4097, 4096)),
    Layout("int", 2, "mosaic", (4096, 4096)),
    # the 125M byte LM's layers: at batch 8 the Hopper form takes 5.0-5.6 µs on 768x2560 / 2560x768 (2.2-2.3x
    # bf16; Triton 0.60-0.96x), at batch 64 7.1 µs on 768x2560 (1.84x; Triton 0.90x); at batch 1 it takes ~7 µs
    # (0.24-0.29x: a floor of launch, pipeline fill, epilogue and the split-K sum) where the Triton GEMV takes 2.6-3.5
    # µs. Whole decode steps agree: 125M batch 1 1,231 bytes/s (Hopper) vs 1,709 (GEMV), batch 8 10,605 vs 5,181
    # (separate runs). The ~1B LM's shapes (stop 28): 2048x5632 batch 1 GEMV 1.59x bf16 vs Hopper 1.12x, batch 8 /
    # 64 Hopper 0.83x / 0.86x vs Triton 0.46x / 0.49x; 5632x2048 batch 1 0.92x vs 0.89x, batch 8 / 64 / 256 Hopper
    # 0.63x / 1.01x / 0.67x vs 0.14x / 0.29x / 0.53x: neither beats bf16 there from batch 8, the Hopper form is the
    # faster int4; whole ~1B decode at batch 64: 26,797 bytes/s (bf16 29,247; Triton layouts 17,188 in another
    # call). Batches 2-7 were not measured: batch < 8 below 4096 stays with the Triton forms.
    Layout("int", 8, "mosaic", (768, 768)),
    # NF4 at K, N >= 4096, with the word lookup (stop 30, nf4_words.py): 4096x11008 batch 8 / 16 / 64 Hopper 1.21x /
    # 1.23x / 1.42x bf16 vs Triton tc 0.27x / 0.25x / 0.31x; 11008x4096 1.26x / 1.31x / 1.31x vs 0.09-0.11x;
    # 4096x4096 batch 8 0.94-1.02x (two calls) vs 0.33x. Batch 1 (stop 29 lookup): the Triton GEMV 1.13-1.62x vs
    # Hopper 0.74-0.77x;
    # batches 2-7 not measured with the word lookup (stop 29's lookup at batch 4: 0.59x vs Triton 0.61x).
    # Stop 33 ("words8", codes not shuffled, where the layers hold them shuffled): 4096x4096 batch 4 10.6 µs
    # (0.86x bf16: slower than bf16, faster than the GEMV's 22.2), batch 16 / 32 / 64 1.09x / 1.11x / 1.16x, batch
    # 256 0.52x (Triton 0.20x), batch 1 11.0 µs against the GEMV's 10.6: from batch 4 (2-3 not measured).
    # Wider shapes not measured here take this row too (before: from batch 8).
    Layout("nf4", 4, "mosaic", (4096, 4096)),
    # 11008x4096 (stop 33): batch 1 / 4 Hopper 19.3 / 18.1 µs (2.00x / 1.37x bf16) vs the GEMV's 32.7 / 56.2 µs
    # (1.19x / 0.44x); batch 32 1.46x vs 0.10x; batch 256 0.46x vs 0.12x.
    Layout("nf4", 1, "mosaic", (11008, 4096)),
    # NF4 with the word lookup at batch 1 / 4 (stop 31, codes not shuffled): 4096x11008 1.72x / 1.30x bf16 vs
    # Triton 1.69x / 0.65x; shuffled codes (as the layers now hold them) batch 1 1.94x vs 1.81x; stop 32 (one
    # process, "words8", unshuffled) batch 1 19.8 µs (1.73x) vs the GEMV's 21.3 (1.61x). 4096x4096 batch 1 1.04x
    # (11.1 µs, bf16 11.5) where the GEMV measured 1.13-1.62x (stop 29): that shape stays on the GEMV below 4.
    Layout("nf4", 1, "mosaic", (4096, 11008)),
    # phi4 (stop 31, shuffled codes, as prepare_for stores them): 4096x11008 batch 1 / 4 / 8 / 32 Hopper 2.11x /
    # 1.44x / 1.30x / 1.51x bf16 vs Triton 1.33x / 0.52x / 0.33x / 0.59x, batch 256 0.51x vs 0.24x; 4096x4096 batch
    # 1 1.17x (Triton not timed): only the measured shape and wider.
    Layout("phi", 1, "mosaic", (4096, 11008)),
    # int8 (stop 31): 4096x11008 batch 1 / 8 / 16 / 64 Hopper 1.98x / 1.26x / 1.24x / 1.25x bf16 vs Triton 1.89x /
    # 0.31x / 0.31x / 0.25x; 11008x4096 2.02x / 1.42x / 1.49x / 1.34x vs 0.32x / 0.14x / 0.14x / 0.28x (ideal
    # 1.9x); the ~1B LM's 2048x5632 batch 1 1.34x vs Triton GEMV 1.45x, batch 8 / 16 / 64 0.76x / 0.79x / 0.81x vs
    # 0.36-0.38x (neither beats bf16); 5632x2048 batch 1 0.96x vs 1.00x. Whole ~1B decode, int8 batch 8: Hopper
    # 5,699 bytes/s vs Triton 2,551. Batches 2-7 not measured. The batch->=8 row also takes shapes between the
    # measured ones (4096x4096, 2048x2048, 5632x2048), unmeasured: Triton was 0.14-0.38x bf16 at every int8 cell
    # timed from batch 8, the Hopper form 2.1-10x faster.
    Layout("int", 1, "mosaic", (4096, 11008), bits=8),
    Layout("int", 1, "mosaic", (11008, 4096), bits=8),
    Layout("int", 8, "mosaic", (2048, 2048), bits=8),
    Layout("*", 1, "triton"),
)


HOPPER_CODES = (("int", 4), ("int", 8), ("nf4", 4), ("phi", 4))  # what MosaicWeight holds (mosaic_layout.py)


def hopper() -> bool:
    """True on an H100 / H200 / H800 / GH200 (sm_90): where Mosaic GPU lowers."""
    d = jax.devices()[0]
    return d.platform == "gpu" and any(h in d.device_kind for h in ("H100", "H200", "H800", "GH200"))


def layout_form(method: str, bits: int, k: int, n: int, batch: int = 1, on_hopper: bool | None = None,
                table: tuple[Layout, ...] | None = None) -> str:
    """"mosaic" or "triton" for a (k in, n out) weight of this method and code width (a φ-grid's index bits) at
    this decode batch."""
    if batch < 1:
        raise ValueError(f"batch={batch}: the decode batch is at least 1")
    if (method, bits) not in HOPPER_CODES or not (hopper() if on_hopper is None else on_hopper):
        return "triton"
    for row in LAYOUTS if table is None else table:
        same = row.method == "*" or (row.method == method and row.bits == bits)
        if same and batch >= row.min_batch and k >= row.min_shape[0] and n >= row.min_shape[1]:
            return row.form
    return "triton"
