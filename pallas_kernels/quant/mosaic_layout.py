"""The Hopper form's weight layout (MosaicWeight), made once at prepare time from a 4-bit int / int8 / NF4 /
4-bit φ-grid PackedWeight, its launch plan, and the jnp model of what the kernel (pallas_kernels/quant/mosaic.py)
feeds the tensor cores.

Layout:
  * w      (K' / g, N, g) int4 (int8 for 8-bit int), the signed codes group by group (each group its own 2-D tile,
           so a pipeline step can take several groups and each keeps its own swizzled tile): int: code - centre
           (symmetric: 2**(bits-1) - 1, so [-7, 7] / [-127, 127]) or code - 2**(bits-1) (asymmetric); NF4 and
           phi4: code - 8. XLA stores int4 two to a byte.
  * scale  (K' / g, N) bfloat16: the group multiplier (int scale, NF4 absmax with double quantization resolved).
  * offset (K' / g, N) bfloat16 or None: asymmetric int only, 2**(bits-1) - zero (an integer of at most 8
           bits, exact in bf16), added to the code before the scale so that (code - zero) stays exact (|.| <= 255)
           and nothing cancels.
K' >= K: the groups are padded (zero codes, zero scales) to a multiple of split_k x groups-per-step of the plan,
so that the programs fill the GPU in full waves (plan_for). The group multipliers are rounded to bf16 here and the
products with the codes in the kernel: both within the bf16 rounding of the weight that the reference applies.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from hqf_jax.ops import quant_grids as qg
from pallas_kernels.quant.decode import decoder, tables_for
from pallas_kernels.quant.layout import KernelLayoutError, PackedWeight

MOSAIC_METHODS = ("int", "nf4", "phi")  # phi: a 4-bit index and no deviation stage (lut_levels)
COMPUTE_WGS = 2
N_SM = 132  # H100 / H200 SXM

# Microseconds per pipeline step of one program (2 compute warpgroups x wg_rows rows, `groups` groups of 64
# int4 columns): kernel time over steps per program (launch, epilogue and split-K sum included) of the variants
# that one H200 ran on 11008x4096 int4/g64 at batch 1 with fewer programs than SMs, 2026-11-30 (the second
# call in docs/BENCHMARKS.md, "before the plan"; `python -m bench.quant_mosaic` now times the plan and its
# neighbours). Longer steps amortise a step's fixed latency (inferred: a 128 x 64 int4 block reads in ~0.14 us
# at the SM's share of the bandwidth).
STEP_US = {(64, 1): 0.41, (64, 2): 0.69, (64, 4): 1.08, (128, 1): 0.59, (128, 2): 1.10, (128, 4): 1.83}
PROGRAM_US = 1.0  # per wave: epilogue (accumulator -> shared -> global) and launch, estimated
MAX_PAD = 0.05  # at most this share of padded groups
SMEM_BYTES = 232448 - 4096  # the H200's opt-in shared memory per block, less room for barriers
MIN_STEPS = 4  # pipeline steps per program, where the weight has that many groups (the copies need a few in flight)


def smem_bytes(tb: int, g: int, groups: int, wg_rows: int, stages: int, has_offset: bool, bits: int = 4) -> int:
    cta_n = COMPUTE_WGS * wg_rows
    stage = tb * groups * g * 2 + groups * cta_n * g * bits // 8 + groups * cta_n * 2 * (2 if has_offset else 1)
    return stages * stage + COMPUTE_WGS * wg_rows * tb * 4


@dataclasses.dataclass(frozen=True)
class Plan:
    wg_rows: int
    groups: int
    split_k: int
    n_groups: int  # K' / g, padded


def plan_options(n: int, ng: int, g: int = 64, n_sm: int = N_SM, max_pad: float = MAX_PAD,
                 bits: int = 4) -> list[tuple[float, Plan]]:
    """Every (rows per warpgroup, groups per step, split_k, padded groups) with its cost by STEP_US, cheapest first:
    waves x (steps x step time + PROGRAM_US), for batch tiles of one (batch <= 128), padding at most max_pad of the
    groups, with at least MIN_STEPS steps a program where the weight has that many groups, and only forms that fit
    shared memory at the smallest batch tile (16) with two stages (so that every batch runs: resolve shrinks the
    tile). Step times scale with g / 64 (int8 takes int4's: its steps were not timed apart)."""
    out = []
    for (wr, gr), t in STEP_US.items():
        if n % (COMPUTE_WGS * wr) or smem_bytes(16, g, gr, wr, 2, True, bits) > SMEM_BYTES:
            continue
        tiles = n // (COMPUTE_WGS * wr)
        for sk in range(1, 33):
            unit = sk * gr
            ngp = -(-ng // unit) * unit
            if ngp - ng > max_pad * ng or ngp // unit < min(MIN_STEPS, ng):
                continue
            waves = -(-tiles * sk // n_sm)
            out.append((waves * (ngp // unit * t * g / 64 + PROGRAM_US), Plan(wr, gr, sk, ngp)))
    return sorted(out, key=lambda cp: cp[0])


def plan_for(n: int, ng: int, g: int = 64, n_sm: int = N_SM, bits: int = 4) -> Plan:
    """The cheapest plan of plan_options."""
    options = plan_options(n, ng, g, n_sm, bits=bits)
    if not options:
        raise KernelLayoutError(f"no Mosaic plan for {n} outputs and {ng} groups")
    return options[0][1]


@dataclasses.dataclass(frozen=True)
class MosaicWeight:
    w: jax.Array  # (K' // group, N, group) int4 (int8: bits == 8) signed codes
    scale: jax.Array  # (K' // group, N) bfloat16
    offset: jax.Array | None  # (K' // group, N) bfloat16 integers 2**(bits-1) - zero, asymmetric int only
    group: int
    method: str  # "int" | "nf4" | "phi"
    k: int  # input features (before padding)
    plan: Plan
    levels: tuple[float, ...] | None = None  # the 16 levels by code of a table codec (NF4, 4-bit φ-grid), else None
    shuffled: bool = False  # each group's columns stored in nf4_words.column_order (table codecs: no relayout)
    bits: int = 4  # code width: 4, or 8 (int only)

    def __post_init__(self):
        if self.levels is not None:  # a tuple: the pytree's static data is hashed by jit (a list would not be)
            object.__setattr__(self, "levels", tuple(float(x) for x in self.levels))
        if (self.levels is None) != (self.method == "int") or (self.levels is not None and len(self.levels) != 16):
            raise KernelLayoutError(f"MosaicWeight(method={self.method!r}): int codes take no levels, a table codec "
                                    "(nf4, phi) its 16 levels by code (lut_levels)")
        if self.bits not in (4, 8) or (self.bits == 8 and self.method != "int"):
            raise KernelLayoutError(f"MosaicWeight(bits={self.bits}, method={self.method!r}): 4-bit codes, or "
                                    "8-bit int codes")
        if self.shuffled and self.levels is None:
            raise KernelLayoutError("shuffle=True stores the codes for the table lookup's words: NF4 and phi4 "
                                    "weights only (int4 converts through Mosaic GPU's own relayout)")

    @property
    def shape(self) -> tuple[int, int]:
        return self.w.shape[1], self.k

    @property
    def nbytes(self) -> int:
        ng, n, g = self.w.shape
        extra = self.scale.size * 2 * (1 if self.offset is None else 2)
        return n * ng * g * self.bits // 8 + extra


jax.tree_util.register_dataclass(MosaicWeight, data_fields=["w", "scale", "offset"],
                                 meta_fields=["group", "method", "k", "plan", "levels", "shuffled", "bits"])


def lut_levels(cfg) -> tuple[float, ...] | None:
    """The 16 levels by code the kernel looks up (NF4's table; a φ-grid's signed geometric levels at a 4-bit index,
    qg.geometric_levels), or None for int codes (converted, not looked up)."""
    if cfg.method == "nf4":
        return tuple(float(x) for x in qg.NF4_LEVELS)
    if cfg.method == "phi":
        return tuple(float(x) for x in qg.geometric_levels(qg.resolve_ratio(cfg.ratio), cfg.index_bits))
    return None


def check_mosaic(pw: PackedWeight) -> None:
    """KernelLayoutError naming every reason the Mosaic form cannot take this weight."""
    cfg = pw.cfg
    problems = []
    if cfg.method not in MOSAIC_METHODS:
        problems.append(f"mode='mosaic' takes int4, int8, NF4 and 4-bit φ-grid weights, not {cfg.name}")
    elif cfg.method == "phi" and (cfg.index_bits != 4 or cfg.depth or cfg.sort):
        problems.append(f"mode='mosaic' takes a φ-grid of a 4-bit index without deviation stages or sorting "
                        f"(e.g. phi4), not {cfg.name}: the kernel holds one 4-bit code plane")
    elif cfg.method != "phi" and code_bits(pw) not in ((4, 8) if cfg.method == "int" else (4,)):
        problems.append(f"mode='mosaic' needs 4-bit codes (int: 4 or 8), {cfg.name} has {code_bits(pw)}")
    g = getattr(cfg, "group_size", None) or pw.cols
    if g not in (64, 128, 256):
        problems.append(f"group_size={g}: the Mosaic form steps one group per pipeline stage, use 64, 128 or 256")
    if pw.rows % (COMPUTE_WGS * 64):
        problems.append(f"the {pw.rows} output features must be a multiple of {COMPUTE_WGS * 64}")
    if problems:
        raise KernelLayoutError("; ".join(problems))


def _code_field(pw: PackedWeight) -> str:
    """The field of the codes the kernel reads: q, a φ-grid's idx."""
    return "idx" if pw.cfg.method == "phi" else "q"


def code_bits(pw: PackedWeight) -> int:
    """Width of the code field the kernel reads."""
    return pw.bits_dict[_code_field(pw)]


def _codes(pw: PackedWeight) -> jax.Array:
    """(R, C) uint32 codes of the 4- or 8-bit code field (q; a φ-grid's idx) (code e of a word at bits
    [w e, w e + w))."""
    (words,) = pw.elem[_code_field(pw)]
    w = code_bits(pw)
    shifts = jnp.arange(32 // w, dtype=jnp.uint32) * w
    return ((words[:, :, None] >> shifts) & jnp.uint32(2**w - 1)).reshape(pw.rows, pw.cols)


def prepare_mosaic(pw: PackedWeight, plan: Plan | None = None, shuffle: bool = False) -> MosaicWeight:
    """The Mosaic form's layout of a 4-bit int / int8 / NF4 / 4-bit φ-grid PackedWeight (one XLA pass; nothing is
    dequantized). ``shuffle`` (table codecs): each group's columns stored in nf4_words.column_order, so that the
    kernel's lookup skips the relayout of every tile."""
    check_mosaic(pw)
    cfg = pw.cfg
    g = getattr(cfg, "group_size", None) or pw.cols
    ng = pw.cols // g
    bits = code_bits(pw)
    plan = plan or plan_for(pw.rows, ng, g, bits=bits)
    if plan.n_groups < ng:
        raise KernelLayoutError(f"plan.n_groups={plan.n_groups} is below the weight's {ng} groups")
    flat = jnp.arange(pw.rows * ng, dtype=jnp.int32).reshape(pw.rows, ng)
    (mult,), offset = decoder(cfg).scales(pw, pw.group, tables_for(cfg), flat)  # (R, ng) float32
    codes = _codes(pw).astype(jnp.int32)
    off = None
    if cfg.method == "int" and cfg.symmetric:
        signed = codes - (2 ** (cfg.bits - 1) - 1)
    else:
        signed = codes - 2 ** (bits - 1)
        if offset is not None:
            off = (2.0 ** (bits - 1) - offset).T.astype(jnp.bfloat16)
    pad = plan.n_groups - ng
    w3 = jnp.pad(signed.reshape(pw.rows, ng, g).transpose(1, 0, 2), ((0, pad), (0, 0), (0, 0)))
    if shuffle and lut_levels(cfg) is not None:
        from pallas_kernels.quant.nf4_words import column_order  # here: numpy bookkeeping of Mosaic GPU's layouts

        w3 = w3[:, :, column_order(g)]
    off = None if off is None else jnp.pad(off, ((0, pad), (0, 0)))
    scale = jnp.pad(mult.T.astype(jnp.bfloat16), ((0, pad), (0, 0)))
    return MosaicWeight(w=w3.astype(jnp.int4 if bits == 4 else jnp.int8), scale=scale,
                        offset=off, group=g, method=cfg.method, k=pw.cols, plan=plan, levels=lut_levels(cfg),
                        shuffled=shuffle, bits=bits)


# jitted: one compile per weight shape and codec, where eager ops compile ~37 small programs per new shape (a 125M
# int4 engine: 40 compiles and 5.4 s against 186 and 12.1 s on a CPU, `python -m bench.lower_startup
# [--eager-layout]`, 2026-12-01); what the layers' prepare_for uses
prepare_mosaic_jit = jax.jit(prepare_mosaic, static_argnames=("plan", "shuffle"))


def nf4_level(v: jax.Array, levels=None) -> jax.Array:
    """Level of v = code - 8 (any float dtype; exact small integers in [-8, 7]): a balanced select tree over the
    16 levels by code (NF4's unless ``levels`` is given)."""
    levels = [float(x) for x in (qg.NF4_LEVELS if levels is None else levels)]

    def tree(lo: int, hi: int):  # levels[lo:hi] for codes lo..hi-1
        if hi - lo == 1:
            return jnp.asarray(levels[lo], v.dtype)
        mid = (lo + hi) // 2
        return jnp.where(v >= jnp.asarray(mid - 8, v.dtype), tree(mid, hi), tree(lo, mid))

    return tree(0, 16)


def decode_model(mw: MosaicWeight) -> jax.Array:
    """(N, K) float32 weight exactly as the kernel feeds wgmma (bf16 products), in jnp: the kernel's reference."""
    ng, n, g = mw.w.shape
    w = mw.w
    if mw.shuffled:  # back to the weight's column order: stored column c is column order[c]
        from pallas_kernels.quant.nf4_words import column_order

        w = w[:, :, np.argsort(column_order(g))]
    v = w.astype(jnp.float32).astype(jnp.bfloat16).transpose(1, 0, 2).reshape(n, ng * g)
    if mw.levels is not None:
        v = nf4_level(v, mw.levels)
    if mw.offset is not None:
        v = v + jnp.repeat(mw.offset.T, g, axis=1)
    return (v * jnp.repeat(mw.scale.T, g, axis=1)).astype(jnp.float32)[:, :mw.k]
