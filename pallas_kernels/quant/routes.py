"""The dispatch table of quant_matmul(x, pw) without blocks (pallas_kernels/quant/dispatch.py: choose, explain).

The first row whose method, shape and batch bound match AND whose form fits the weight wins (vec needs its layout
to fit and batch <= 8, tc int/NF4 codes of 2/4/8 bits; tc blocks are shrunk to the shared-memory limit,
dispatch.fit_smem). A row's blocks are BlockConfig fields over BlockConfig() (as the sweep prints them); a row
without blocks takes the form's defaults. Rows for one shape go before the rows for any shape.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Route:
    method: str  # config.method ("int", "nf4", "phi") or "*"
    max_batch: int | None  # the row holds for batch <= max_batch (None: any batch)
    form: str  # "vec" | "fma" | "dot" | "tc"
    shape: tuple[int, int] | None = None  # (in features K, out features N); None: any shape
    blocks: dict | None = None  # BlockConfig fields over BlockConfig(); None: the form's default blocks


_VEC = {"block_n": 1, "block_k": 1024, "num_warps": 1, "num_stages": 4}

# Measured: `python -m bench.quant_kernels` on one NVIDIA H200 (jax 0.11.2, Triton-backend Pallas), 2026-11-30;
# the per-shape rows are that sweep's best passing config per (method, shape, batch), each with its speed-up over
# the same-run bf16 XLA matmul. The GEMV form ("vec") wins at batch 1 (4096x11008: int4 2.26x, NF4 1.82x). At
# batch >= 4 NO quantized form beat bf16 in this sweep (tc 0.2-0.6x, dot 0.2-0.3x): these rows pick the fastest
# quantized kernel, not one faster than bf16. "int" rows were measured with int4 (int8/int2 reuse them untimed);
# nf4 and phi5u8 at 11008x4096 were not reached (the sweep ran past its time budget) and fall to the general rows.
ROUTES: tuple[Route, ...] = (
    Route('int', 1, 'vec', shape=(4096, 11008), blocks=_VEC),  # 2.26x bf16
    Route('int', 4, 'vec', shape=(4096, 11008), blocks=_VEC),  # 0.64x bf16
    Route('int', 8, 'tc', shape=(4096, 11008), blocks={'block_n': 128, 'block_k': 256, 'block_b': 16, 'split_k': 2}),  # 0.47x bf16
    Route('int', 16, 'tc', shape=(4096, 11008), blocks={'block_n': 128, 'block_k': 256, 'block_b': 16, 'split_k': 2}),  # 0.50x bf16
    Route('int', 32, 'tc', shape=(4096, 11008), blocks={'block_n': 128, 'block_b': 32, 'split_k': 2}),  # 0.35x bf16
    Route('int', 64, 'tc', shape=(4096, 11008), blocks={'block_n': 128, 'block_b': 64, 'split_k': 2}),  # 0.38x bf16
    Route('int', 256, 'tc', shape=(4096, 11008), blocks={'block_n': 128, 'block_b': 64}),  # 0.17x bf16
    Route('nf4', 1, 'vec', shape=(4096, 11008), blocks=_VEC),  # 1.82x bf16
    Route('nf4', 4, 'vec', shape=(4096, 11008), blocks=_VEC),  # 0.57x bf16
    Route('nf4', 8, 'tc', shape=(4096, 11008), blocks={'block_n': 128, 'block_k': 256, 'block_b': 16, 'split_k': 2}),  # 0.25x bf16
    Route('nf4', 16, 'tc', shape=(4096, 11008), blocks={'block_n': 128, 'block_k': 256, 'block_b': 16, 'split_k': 2}),  # 0.27x bf16
    Route('nf4', 32, 'tc', shape=(4096, 11008), blocks={'block_n': 128, 'block_b': 32, 'split_k': 2}),  # 0.30x bf16
    Route('nf4', 64, 'tc', shape=(4096, 11008), blocks={'block_n': 128, 'block_b': 64, 'split_k': 2}),  # 0.30x bf16
    Route('nf4', 256, 'tc', shape=(4096, 11008), blocks={'block_n': 128, 'block_b': 64}),  # 0.15x bf16
    Route('phi', 1, 'vec', shape=(4096, 11008), blocks=_VEC),  # 1.01x bf16
    Route('phi', 4, 'vec', shape=(4096, 11008), blocks=_VEC),  # 0.37x bf16
    Route('phi', 8, 'vec', shape=(4096, 11008), blocks=_VEC),  # 0.24x bf16
    Route('phi', 16, 'dot', shape=(4096, 11008), blocks={'block_n': 32, 'split_k': 4}),  # 0.26x bf16
    Route('phi', 32, 'dot', shape=(4096, 11008), blocks={'block_n': 32, 'block_b': 32, 'split_k': 2}),  # 0.25x bf16
    Route('phi', 64, 'dot', shape=(4096, 11008), blocks={'block_n': 32, 'block_b': 64, 'split_k': 2}),  # 0.27x bf16
    Route('phi', 256, 'dot', shape=(4096, 11008), blocks={'block_k': 64, 'block_b': 64}),  # 0.16x bf16
    Route('int', 1, 'vec', shape=(4096, 4096), blocks=_VEC),  # 1.63x bf16
    Route('int', 4, 'vec', shape=(4096, 4096), blocks=_VEC),  # 0.57x bf16
    Route('int', 8, 'tc', shape=(4096, 4096), blocks={'block_n': 128, 'block_k': 256, 'block_b': 16, 'split_k': 4}),  # 0.63x bf16
    Route('int', 16, 'tc', shape=(4096, 4096), blocks={'block_n': 128, 'block_k': 256, 'block_b': 16, 'split_k': 4}),  # 0.61x bf16
    Route('int', 32, 'tc', shape=(4096, 4096), blocks={'block_n': 128, 'block_b': 32, 'split_k': 8}),  # 0.49x bf16
    Route('int', 64, 'tc', shape=(4096, 4096), blocks={'block_n': 128, 'block_b': 64, 'split_k': 8}),  # 0.50x bf16
    Route('int', 256, 'tc', shape=(4096, 4096), blocks={'block_n': 128, 'block_b': 64, 'split_k': 2}),  # 0.24x bf16
    Route('nf4', 1, 'vec', shape=(4096, 4096), blocks=_VEC),  # 1.20x bf16
    Route('nf4', 4, 'vec', shape=(4096, 4096), blocks=_VEC),  # 0.45x bf16
    Route('nf4', 8, 'tc', shape=(4096, 4096), blocks={'block_n': 128, 'block_k': 256, 'block_b': 16, 'split_k': 4}),  # 0.35x bf16
    Route('nf4', 16, 'tc', shape=(4096, 4096), blocks={'block_n': 128, 'block_k': 256, 'block_b': 16, 'split_k': 4}),  # 0.35x bf16
    Route('nf4', 32, 'tc', shape=(4096, 4096), blocks={'block_n': 128, 'block_b': 32, 'split_k': 8}),  # 0.43x bf16
    Route('nf4', 64, 'tc', shape=(4096, 4096), blocks={'block_n': 128, 'block_b': 64, 'split_k': 8}),  # 0.45x bf16
    Route('nf4', 256, 'tc', shape=(4096, 4096), blocks={'block_n': 128, 'block_b': 64, 'split_k': 2}),  # 0.20x bf16
    Route('phi', 1, 'vec', shape=(4096, 4096), blocks=_VEC),  # 0.78x bf16
    Route('phi', 4, 'vec', shape=(4096, 4096), blocks=_VEC),  # 0.35x bf16
    Route('phi', 8, 'vec', shape=(4096, 4096), blocks=_VEC),  # 0.26x bf16
    Route('phi', 16, 'dot', shape=(4096, 4096), blocks={'block_n': 32, 'split_k': 4}),  # 0.30x bf16
    Route('phi', 32, 'dot', shape=(4096, 4096), blocks={'block_n': 32, 'block_b': 32, 'split_k': 2}),  # 0.29x bf16
    Route('phi', 64, 'dot', shape=(4096, 4096), blocks={'block_n': 32, 'block_b': 64, 'split_k': 2}),  # 0.32x bf16
    Route('phi', 256, 'dot', shape=(4096, 4096), blocks={'block_k': 64, 'block_b': 64}),  # 0.22x bf16
    Route('int', 1, 'fma', shape=(11008, 4096), blocks={'split_k': 2}),  # 0.34x bf16
    Route('int', 4, 'dot', shape=(11008, 4096), blocks={'split_k': 2}),  # 0.63x bf16
    Route('int', 8, 'tc', shape=(11008, 4096), blocks={'block_n': 128, 'block_k': 256, 'block_b': 16}),  # 0.22x bf16
    Route('int', 16, 'tc', shape=(11008, 4096), blocks={'block_n': 128, 'block_k': 256, 'block_b': 16}),  # 0.20x bf16
    Route('int', 32, 'tc', shape=(11008, 4096), blocks={'block_n': 128, 'block_b': 32, 'split_k': 2}),  # 0.37x bf16
    Route('int', 64, 'tc', shape=(11008, 4096), blocks={'block_n': 128, 'block_b': 64, 'split_k': 2}),  # 0.39x bf16
    Route('int', 256, 'tc', shape=(11008, 4096), blocks={'block_n': 128, 'block_b': 64, 'split_k': 2}),  # 0.24x bf16
    # any shape: vec measured fastest at batch <= 4 for int4/NF4/phi5u8 (4096xN) and to batch 8 for phi5u8; tc
    # fastest for int4/NF4 at batch >= 8; batch 5-7 was not swept (tiled tl.dot form)
    Route("*", 4, "vec"),
    Route("phi", 8, "vec"),
    Route("*", 7, "dot"),
    Route("int", None, "tc"),  # tensor cores fed from registers by bit planes
    Route("nf4", None, "tc"),
    Route("*", None, "dot"),  # phi-grid and anything tc cannot take
)
