"""NF4 level lookup in registers by byte permutes (PTX ``prmt``), for the Hopper kernel (mosaic.py).

The Hopper kernel holds NF4 codes as signed nibbles v = code - 8 (mosaic_layout.py). The select tree
(``mosaic_layout.nf4_level``) spends 15 compares and 15 selects per weight; the stage probe (stop 28) measured it at
65-68 µs of an 80 µs NF4 call. Here four nibbles become four bf16 levels with eight ``prmt`` and four integer ops:

- the 16 bf16 levels, indexed by the raw nibble n (two's complement of v), are split into their high bytes and low
  bytes, four 32-bit words each (``tables()``: word j holds the bytes of nibbles 4j..4j+3);
- ``prmt(a, b, sel)`` picks output byte i from the eight bytes of (a, b) by nibble i of sel, so with idx = n & 7
  one prmt reads entries 0-7 and one reads entries 8-15; a third prmt keeps, per byte, the first or the second by
  bit 3 of n (the selector nibble i + 4 * bit3, as CUTLASS's int4 -> f8 lookup does);
- the four high bytes and four low bytes are interleaved into two bf16x2 words by two more prmt; the kernel runs
  the whole of it as one PTX block per four nibbles, the tables as immediates.

``PROGRAM`` is the block as data (``PROGRAM_WORD``: all eight nibbles of a word): ``ptx()`` writes the PTX the kernel
runs and ``run_np`` runs the same steps on numpy integers (``prmt_np`` models the instruction); the CPU tests run
every 16-bit nibble pattern through them. ``lookup_half`` / ``lookup_word`` emit a block in a Mosaic GPU kernel
(here and nf4_words.py); ``nf4_levels_prmt`` is the Mosaic GPU form on the WGMMA layout (``plgpu.inline_mgpu``).
"""

from __future__ import annotations

import numpy as np

from hqf_jax.ops.quant_grids import NF4_LEVELS
from pallas_kernels.quant.layout import KernelLayoutError

INTERLEAVE = (0x5140, 0x7362)  # (lo, hi) bytes -> bf16 pairs of elements (0, 1) and (2, 3)


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns of float32 values (round to nearest even), as uint16 (numpy only: also a constant
    inside a kernel's trace)."""
    import jax.numpy as jnp

    return np.asarray(x, np.float32).astype(jnp.bfloat16).view(np.uint16)


def level_bits(levels=None) -> np.ndarray:
    """(16,) uint16: the bf16 level of each raw nibble n (v = n - 16 * (n >= 8), code = v + 8); ``levels``: the 16
    levels by code (NF4's by default; a 4-bit φ-grid's, mosaic_layout.lut_levels)."""
    n = np.arange(16)
    code = np.where(n >= 8, n - 16, n) + 8
    return _bf16_bits(np.asarray(NF4_LEVELS if levels is None else levels, np.float32)[code])


def _words(b: np.ndarray) -> tuple[int, ...]:
    return tuple(int(b[4 * j]) | int(b[4 * j + 1]) << 8 | int(b[4 * j + 2]) << 16 | int(b[4 * j + 3]) << 24
                 for j in range(4))


def tables(levels=None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(high-byte words, low-byte words), four each: word j holds nibbles 4j..4j+3."""
    bits = level_bits(levels).astype(np.uint32)
    return _words(bits >> 8), _words(bits & 0xFF)


def prmt_np(a, b, sel):
    """PTX prmt.b32 (default mode) on ints or numpy integer arrays: byte i of the result is byte (sel nibble i) of
    the eight bytes b:a, with the nibble's bit 3 replicating that byte's sign bit."""
    a, b, sel = (np.asarray(v, np.uint64) & np.uint64(0xFFFFFFFF) for v in (a, b, sel))
    src = a | b << np.uint64(32)
    out = np.zeros(np.broadcast(a, b, sel).shape, np.uint64)
    for i in range(4):
        s = sel >> np.uint64(4 * i) & np.uint64(0xF)
        byte = src >> (np.uint64(8) * (s & np.uint64(7))) & np.uint64(0xFF)
        byte = np.where(s & np.uint64(8), np.where(byte & np.uint64(0x80), np.uint64(0xFF), np.uint64(0)), byte)
        out |= byte << np.uint64(8 * i)
    return out


def _index(halves: int) -> tuple:
    """idx = n & 7 per nibble (the entry within a half table); sel: selector nibble i picks byte i of the first
    (n < 8) or the second (n >= 8) half table's prmt; for the low 16 bits of w (halves=1) or all 32 (2)."""
    rep = 0x10001 if halves == 2 else 1  # the 16-bit masks, once or in both halves
    return (("and", "idx", ("w", 0x7777 * rep)), ("and", "sel", ("w", 0x8888 * rep)), ("shr", "sel", ("sel", 1)),
            ("or", "sel", ("sel", 0x3210 * rep)))


def _levels(out_a: str, out_b: str) -> tuple:
    """The four levels of idx / sel's low 16 bits: high and low bytes by three prmt each, interleaved into out_a,
    out_b."""
    return (("prmt", "a", ("H0", "H1", "idx")), ("prmt", "b", ("H2", "H3", "idx")), ("prmt", "h", ("a", "b", "sel")),
            ("prmt", "a", ("L0", "L1", "idx")), ("prmt", "b", ("L2", "L3", "idx")), ("prmt", "l", ("a", "b", "sel")),
            ("prmt", out_a, ("l", "h", INTERLEAVE[0])), ("prmt", out_b, ("l", "h", INTERLEAVE[1])))


# The lookup of the four nibbles in bits 0-15 of w as (op, destination, operands): the kernel's PTX block and the
# numpy model (``run_np``) are both made from it. H0-H3 / L0-L3: the high- / low-byte table words (immediates).
PROGRAM = (*_index(1), *_levels("out0", "out1"))
# The same lookup of all eight nibbles of w: the index and selector made once for the word (its upper half's by
# one shift each, prmt reading its selector's low 16 bits), 6 integer ops and 16 prmt where two runs of PROGRAM
# (on w and on w >> 16) take 9 and 16. Outputs out0..out3: the bf16 pairs of elements (0, 1) .. (6, 7).
PROGRAM_WORD = (*_index(2), *_levels("out0", "out1"), ("shr", "idx", ("idx", 16)),
                ("shr", "sel", ("sel", 16)), *_levels("out2", "out3"))
_NP_OPS = {"and": lambda x, y: x & y, "or": lambda x, y: x | y, "shr": lambda x, y: x >> y, "prmt": None}
_PTX_TYPES = {"and": "b32", "or": "b32", "shr": "u32", "prmt": "b32"}


def _table_env(levels=None) -> dict:
    hi, lo = tables(levels)
    return {**{f"H{j}": w for j, w in enumerate(hi)}, **{f"L{j}": w for j, w in enumerate(lo)}}


def _outputs(program) -> list[str]:
    return sorted(d for _, d, _ in program if d.startswith("out"))


def run_np(w, levels=None, program=PROGRAM) -> tuple:
    """A lookup program on numpy uint64 words (or ints) of nibbles: PROGRAM reads bits 0-15 and gives (out0, out1),
    the bf16 pairs of elements (0, 1) and (2, 3); PROGRAM_WORD reads all 32 bits and gives out0..out3. The
    kernel's PTX, run by the numpy model of its instructions."""
    env = {**{k: np.uint64(v) for k, v in _table_env(levels).items()}, "w": np.asarray(w, np.uint64)}
    for op, dst, args in program:
        vals = [env[x] if isinstance(x, str) else np.uint64(x) for x in args]
        env[dst] = prmt_np(*vals) if op == "prmt" else _NP_OPS[op](*vals) & np.uint64(0xFFFFFFFF)
    return tuple(env[o] for o in _outputs(program))


def ptx(levels=None, program=PROGRAM) -> str:
    """A lookup program as one PTX block: $0.. the outputs (two for PROGRAM, four for PROGRAM_WORD), then the word,
    the tables as immediates."""
    outs = _outputs(program)
    env = {k: f"0x{v:08x}" for k, v in _table_env(levels).items()}
    env.update({o: f"${j}" for j, o in enumerate(outs)}, w=f"${len(outs)}")
    regs = sorted({d for _, d, _ in program} - set(outs))
    lines = [f".reg .b32 {', '.join(regs)};"]
    for op, dst, args in program:
        ops = ", ".join(env.get(x, x) if isinstance(x, str) else (str(x) if x < 16 else f"0x{x:x}") for x in args)
        lines.append(f"{op}.{_PTX_TYPES[op]} {env.get(dst, dst)}, {ops};")
    return "{\n" + "\n".join(lines) + "\n}"


def decode_word_np(reg, levels=None) -> np.ndarray:
    """Eight nibbles of 32-bit words (element 0 in bits 0-3) -> (..., 8) uint16 bf16 bit patterns."""
    reg = np.asarray(reg, np.uint64)
    out = []
    for part in range(2):
        for w in run_np(reg >> np.uint64(16 * part), levels):  # the program reads the low 16 bits only
            out += [w & np.uint64(0xFFFF), w >> np.uint64(16)]
    return np.stack(out, -1).astype(np.uint16)


def lookup_half(word, half: int, asm: str) -> list:
    """The lookup of nibbles 4 * half .. 4 * half + 3 of an i32 word inside a Mosaic GPU kernel: one PTX block
    (``asm = ptx(levels)``: PROGRAM, the tables as immediates) on the word (half 0) or the word >> 16 (half 1);
    its two i32 results, the bf16x2 pairs of elements (0, 1) and (2, 3). Used by nf4_levels_prmt and
    nf4_words.nf4_levels_words."""
    from jax.experimental.mosaic.gpu import utils as mu
    from jax._src.lib.mlir import ir
    from jax._src.lib.mlir.dialects import arith

    i32 = ir.IntegerType.get_signless(32)
    return _inline(word if half == 0 else arith.shrui(word, mu.c(16, i32)), asm, 2)


def lookup_word(word, asm: str) -> list:
    """The lookup of all eight nibbles of an i32 word inside a Mosaic GPU kernel (``asm = ptx(levels,
    PROGRAM_WORD)``): its four i32 results, the bf16x2 pairs of elements (0, 1) .. (6, 7)."""
    return _inline(word, asm, 4)


def _inline(word, asm: str, outs: int) -> list:
    """One PTX block on an i32 word: its ``outs`` i32 results."""
    from jax._src.lib.mlir import ir
    from jax._src.lib.mlir.dialects import llvm

    i32 = ir.IntegerType.get_signless(32)
    res = llvm.inline_asm(llvm.StructType.get_literal([i32] * outs), [word], asm, "=r," * outs + "r")
    return [llvm.extractvalue(i32, res, [k]) for k in range(outs)]


def nf4_levels_prmt(w, levels=None):
    """(R, C) int4 array of v = code - 8 in a Mosaic GPU register layout -> the bf16 levels (NF4's unless
    ``levels`` is given), same layout. Inside a Mosaic GPU Pallas kernel only (Hopper)."""
    from jax.experimental.mosaic import gpu as mgpu
    from jax.experimental.mosaic.gpu import utils as mu
    from jax.experimental.pallas import mosaic_gpu as plgpu
    from jax._src.lib.mlir import ir
    from jax._src.lib.mlir.dialects import vector
    import jax.numpy as jnp

    layout = plgpu.Layout.WGMMA

    @plgpu.inline_mgpu(arg_types=(layout,),
                       return_type=plgpu.ShapeDtypeStruct(w.shape, jnp.bfloat16, layout=layout))
    def lookup(_ctx, arr):
        i32 = ir.IntegerType.get_signless(32)
        bf16 = ir.BF16Type.get()
        regs = arr.registers
        [vlen] = ir.VectorType(regs.flat[0].type).shape
        per = max(1, 8 // vlen)  # registers per 32-bit word of nibbles
        flat = list(regs.flat)
        if len(flat) % per or (8 % vlen if vlen < 8 else vlen % 8):
            raise KernelLayoutError(f"nf4_levels_prmt: {len(flat)} registers of {vlen} nibbles, where it reads whole "
                                    "32-bit words of them: use MosaicBlocks(nf4='words') or nf4='select'")

        asm = ptx(levels)
        cache = {}  # (32-bit source word, 16-bit half) -> its two bf16x2 words, shared by the registers in it

        def pair_words(word, half):
            key = (word, half)
            if key not in cache:
                cache[key] = lookup_half(word, half, asm)
            return cache[key]

        def from_word(word, first, count):  # bf16 of nibbles first..first+count-1 of a 32-bit word
            ws = [pair_words(word, e // 4)[(e % 4) // 2] for e in range(first, first + count, 2)]
            ws = mu.vector_concat([vector.broadcast(ir.VectorType.get((1,), i32), x) for x in ws])
            return vector.bitcast(ir.VectorType.get((count,), bf16), ws)

        out = []
        sliced = all(_slice_of_word(r) is not None for r in flat) and vlen % 2 == 0
        if sliced:  # registers cut from 32-bit words (the upcast layout's relayout): read the words themselves
            words = {}  # source vector -> its i32 (one bitcast per word, so the lookups of a word are shared)
            for r in flat:
                src, off = _slice_of_word(r)
                if src not in words:
                    words[src] = mu.bitcast(src, i32)
                out.append(from_word(words[src], off, vlen))
        else:
            for g in range(0, len(flat), per):
                vec = flat[g] if per == 1 else mu.vector_concat(flat[g:g + per])
                n = ir.VectorType(vec.type).shape[0]
                for j in range(n // 8):
                    chunk = vec if n == 8 else mu.vector_slice(vec, slice(8 * j, 8 * j + 8))
                    vals = from_word(mu.bitcast(chunk, i32), 0, 8)
                    out += [vals] if vlen >= 8 else [mu.vector_slice(vals, slice(k * vlen, (k + 1) * vlen))
                                                     for k in range(8 // vlen)]
                if n > 8:  # vlen a multiple of 8: one register from its n // 8 words
                    out[-(n // 8):] = [mu.vector_concat(out[-(n // 8):])]
        new = np.empty(regs.shape, dtype=object)
        for k, idx in enumerate(np.ndindex(regs.shape)):
            new[idx] = out[k]
        return mgpu.FragmentedArray(_registers=new, _layout=arr.layout, _is_signed=None)

    return lookup(w)


def _slice_of_word(reg):
    """(source vector, first element) when reg is a unit-stride slice of a 32-bit vector of nibbles, else None."""
    from jax._src.lib.mlir.dialects import vector

    op = getattr(reg.owner, "opview", None)
    if not isinstance(op, vector.ExtractStridedSliceOp) or op.strides[0].value != 1:
        return None
    from jax.experimental.mosaic.gpu import utils as mu

    return (op.source, op.offsets[0].value) if mu.bitwidth(op.source.type) == 32 else None
