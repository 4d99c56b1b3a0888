"""NF4 lookup on whole 32-bit words of nibbles: the Hopper kernel's int4 -> WGMMA relayout done on i32, then the
prmt lookup (nf4_prmt.PROGRAM) on each word.

With the lookup on the WGMMA layout (nf4_prmt.nf4_levels_prmt) each register holds two nibbles and the registers
of one 32-bit word are interleaved with those of the next, so gathering eight nibbles for a lookup makes LLVM go
through local memory (the SASS comparison is in docs/BENCHMARKS.md, stop 30). Here the tile comes in the layout
it is loaded in (WGMMA_UPCAST_4X: one vector<8 x i4> register = one 32-bit word), the two steps of Mosaic GPU's
own relayout (4X -> 2X: shuffle by lane distance 2 and prmt; 2X -> WGMMA: distance 1 and prmt) run on the i32
words, and each relaid word goes through the lookup whole: no sub-word vector op is left for LLVM.

``wgmma_sources(shape)`` is the register bookkeeping of those two steps, written after Mosaic GPU's
FragmentedArray.to_layout (the 4-bit branches): for each WGMMA-layout register, the UPCAST_4X register whose
relaid word holds it and which of its four nibble pairs. The CPU tests check it is a bijection and simulate the
two steps on a whole warpgroup (every thread's words carrying their elements' coordinates from Mosaic GPU's
layouts): each WGMMA register ends up holding the elements that layout gives it; the GPU runs the kernel against
the jnp model (tests/test_quant_mosaic.py, every NF4 case).
"""

from __future__ import annotations

import functools

import numpy as np

from pallas_kernels.quant.layout import KernelLayoutError

# Mosaic GPU's permutes of the two relayout steps (fragmented_array.py, the 4-bit branches), by lane parity.
STEP_4X_2X = (2, 0x5410, 0x3276)  # shuffle distance; prmt for lanes with (lane % 4) < 2, for the others
STEP_2X_WGMMA = (1, 0x6240, 0x3715)  # shuffle distance; prmt for even lanes, for odd ones
# what to use where this jax's Mosaic GPU layouts break the bookkeeping's assumptions (checked, not assumed)
WORDS_FALLBACK = "use MosaicBlocks(nf4='prmt') or nf4='select' (lookups on Mosaic GPU's own relayout)"
SHUFFLE_FALLBACK = "prepare the weight without shuffle=True"


class _Src:  # a label in the bookkeeping arrays (numpy would broadcast a tuple)
    __slots__ = ("word", "part")

    def __init__(self, word, part):
        self.word, self.part = word, part


def _put(arr: np.ndarray, idx: tuple, v) -> None:
    """arr[idx] = v with numpy's meaning when idx is shorter than arr's rank (Mosaic's code indexes that way: the
    trailing register dims are 1)."""
    sub = arr[idx]
    if isinstance(sub, np.ndarray):
        for j in np.ndindex(sub.shape):
            sub[j] = v
    else:
        arr[idx] = v


def wgmma_sources(shape: tuple[int, int]) -> np.ndarray:
    """Object array of the WGMMA layout's register shape: entry = (UPCAST_4X register index, nibble pair 0-3 of
    that register's word after the two relayout steps)."""
    from jax.experimental.mosaic.gpu import fragmented_array as fa

    s4 = fa.WGMMA_LAYOUT_UPCAST_4X.registers_shape(shape)
    two = np.empty(fa.WGMMA_LAYOUT_UPCAST_2X.registers_shape(shape), object)
    for idx in np.ndindex(s4):  # 4X -> 2X: register idx gives its word's halves to column tiles 2j, 2j + 1
        for half in range(2):
            _put(two, (idx[0], idx[1] * 2 + half, *idx[2:-1]), _Src(idx, half))
    minor = np.moveaxis(two, 1, -1)  # 2X -> WGMMA pairs consecutive column tiles into one 32-bit word
    words = np.empty(minor.size // 2, object)
    for k, (lo, hi) in enumerate(zip(minor.flat[::2], minor.flat[1::2], strict=True)):
        if lo.word != hi.word or (lo.part, hi.part) != (0, 1):
            raise KernelLayoutError(f"relayout of {shape}: a paired word is not one 4X word ({lo.word}, {hi.word}); "
                                    f"this Mosaic GPU's layouts are not the ones nf4_words follows: {WORDS_FALLBACK}")
        words[k] = _Src(lo.word, None)
    words = np.moveaxis(words.reshape(*minor.shape[:-1], minor.shape[-1] // 2), -1, 1)
    out = np.empty(fa.WGMMA_LAYOUT.registers_shape(shape), object)
    for idx, w in np.ndenumerate(words):
        for part in range(4):
            _put(out, (idx[0], idx[1] * 4 + part, *idx[2:-1]), _Src(w.word, part))
    if any(r is None for r in out.flat):
        raise KernelLayoutError(f"relayout of {shape}: a WGMMA register has no source; {WORDS_FALLBACK}")
    res = np.empty(out.shape, object)
    for idx, s in np.ndenumerate(out):
        res[idx] = (s.word, s.part)
    return res


def layout_coords(layout, shape: tuple[int, int], thread: int, reg_idx: tuple) -> list[tuple[int, int]]:
    """(row, col) of each vector element of register ``reg_idx`` of warpgroup thread ``thread`` in a Mosaic GPU
    TiledLayout, in numpy: TiledLayout.thread_idxs (linear index = warp + lane + register offsets over the tiled
    strides), the vector's elements along vector_dim."""
    strides = layout.tiling.tile_strides((shape[1], 1))
    tiled = layout.tiled_tiling_shape

    def offset(idx, dims):  # TiledLayout._delinearize_index: dims major-to-minor
        sizes = [tiled[d] for d in dims]
        out = 0
        for d, size, stride in zip(dims, sizes, np.cumprod([1] + sizes[::-1][:-1])[::-1]):
            out += (idx // int(stride)) % size * strides[d]  # d < 0: a dimension of the tiled suffix
        return out

    base = offset(thread % 32, layout.lane_dims) + offset(thread // 32 % 4, layout.warp_dims)
    base += sum(i * s for i, s in zip(reg_idx, strides))
    lin = [base + v * strides[layout.vector_dim] for v in range(layout.vector_length)]
    return [divmod(int(x), shape[1]) for x in lin]


def column_order(group: int) -> np.ndarray:
    """The pre-shuffle of a group's columns (MosaicWeight.shuffled): stored column c holds the weight's column
    order[c], the same for every row, so that a tile loaded in WGMMA_UPCAST_4X holds in each 32-bit word, unmoved,
    the nibbles the two relayout steps would bring there: the kernel skips the shuffles. Computed from Mosaic GPU's
    layouts on a (64, 64) tile; it repeats every 64 columns and rows (tests/test_nf4_prmt.py checks 64 and 128
    rows, groups of 64-256)."""
    return np.concatenate([np.asarray(_column_order_64()) + 64 * b for b in range(group // 64)])


@functools.lru_cache(maxsize=None)
def _column_order_64() -> tuple[int, ...]:
    """The order of one 64-column block (column_order), computed once a process."""
    from jax.experimental.mosaic.gpu import fragmented_array as fa

    shape = (64, 64)
    order = np.full(shape, -1, np.int64)
    for t in range(128):
        for reg, (word, part) in np.ndenumerate(wgmma_sources(shape)):
            want, held = layout_coords(fa.WGMMA_LAYOUT, shape, t, reg), layout_coords(fa.WGMMA_LAYOUT_UPCAST_4X,
                                                                                        shape, t, word)
            for e in range(2):
                r, c = held[2 * part + e]
                if want[e][0] != r:
                    raise KernelLayoutError(f"the pre-shuffle moves codes across rows: {SHUFFLE_FALLBACK}")
                order[r, c] = want[e][1]
    if (order != order[0]).any() or sorted(order[0]) != list(range(64)):
        raise KernelLayoutError(f"the pre-shuffle is not one column order for every row: {SHUFFLE_FALLBACK}")
    return tuple(int(c) for c in order[0])


def nf4_levels_words(w, levels=None, relayout: bool = True, whole: bool = False):
    """(R, C) int4 array of v = code - 8 in the WGMMA_UPCAST_4X layout (as plgpu.load gives it) -> the bf16
    levels (NF4's unless ``levels``, 16 by code, is given) in the WGMMA layout. ``relayout=False``: the codes were
    stored in ``column_order`` (MosaicWeight.shuffled), so the loaded words already hold what the relayout would
    bring and it is skipped. ``whole``: one PTX block a word (nf4_prmt.PROGRAM_WORD, the eight nibbles' index and
    selector made once), else one a half word (PROGRAM). Inside a Mosaic GPU Pallas kernel only (Hopper)."""
    from jax.experimental.mosaic import gpu as mgpu
    from jax.experimental.mosaic.gpu import utils as mu
    from jax.experimental.mosaic.gpu import fragmented_array as fa
    from jax.experimental.pallas import mosaic_gpu as plgpu
    from jax._src.lib.mlir import ir
    from jax._src.lib.mlir.dialects import arith
    import jax.numpy as jnp

    from pallas_kernels.quant.nf4_prmt import PROGRAM_WORD, lookup_half, lookup_word, ptx

    sources = wgmma_sources(tuple(w.shape))

    @plgpu.inline_mgpu(arg_types=(plgpu.Layout.WGMMA_UPCAST_4X,),
                       return_type=plgpu.ShapeDtypeStruct(w.shape, jnp.bfloat16, layout=plgpu.Layout.WGMMA))
    def lookup(_ctx, arr):
        i32 = ir.IntegerType.get_signless(32)
        c = lambda v: mu.c(v, i32)  # noqa: E731
        lane = mu.thread_idx()

        def step(word, spec, lanes_first):
            dist, first, other = spec
            return mu.prmt(word, mu.shfl_bfly(word, dist), arith.select(lanes_first, c(first), c(other)))

        first_2x = arith.cmpi(arith.CmpIPredicate.ult, arith.remui(lane, c(4)), c(2))
        even = arith.cmpi(arith.CmpIPredicate.eq, arith.remui(lane, c(2)), c(0))
        asm = ptx(levels, PROGRAM_WORD) if whole else ptx(levels)
        relaid, looked = {}, {}

        def pair(word_idx, part):  # bf16x2 of nibble pair `part` of the relaid word
            if word_idx not in relaid:
                word = mu.bitcast(arr.registers[word_idx], i32)
                relaid[word_idx] = step(step(word, STEP_4X_2X, first_2x), STEP_2X_WGMMA, even) if relayout else word
            if whole:
                if word_idx not in looked:
                    looked[word_idx] = lookup_word(relaid[word_idx], asm)
                return looked[word_idx][part]
            key = (word_idx, part // 2)
            if key not in looked:
                looked[key] = lookup_half(relaid[word_idx], part // 2, asm)
            return looked[key][part % 2]

        regs = np.empty(sources.shape, object)
        for idx, (word_idx, part) in np.ndenumerate(sources):
            regs[idx] = mu.bitcast(pair(word_idx, part), ir.VectorType.get((2,), ir.BF16Type.get()))
        return mgpu.FragmentedArray(_registers=regs, _layout=fa.WGMMA_LAYOUT, _is_signed=None)

    return lookup(w)
