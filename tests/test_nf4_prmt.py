"""The Hopper kernel's NF4 lookup by byte permutes (pallas_kernels/quant/nf4_prmt.py): its PTX program, run by a
model of the prmt instruction, gives every nibble's bf16 level (the select tree's table); the PTX text the kernel
runs is that program. The kernel itself runs on the GPU (tests/test_quant_mosaic.py, marked gpu)."""

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.quant import nf4_prmt as P
from hqf_jax.quant.config import parse_method
from pallas_kernels.quant.mosaic_layout import lut_levels, nf4_level


@pytest.mark.parametrize("spec", ["nf4", "phi4", "phi4:ratio=e_sqrt5"])
def test_byte_permute_lookup_is_the_table(spec):
    """The kernel's lookup (eight prmt per four nibbles, nf4_prmt.py) with the codec's tables (NF4's; a 4-bit
    φ-grid's signed geometric levels), run by a model of the instruction on every 16-bit nibble pattern and on
    random 32-bit words, gives the bf16 level of each nibble: the select tree's table, which is the codec's."""
    levels = lut_levels(parse_method(spec))
    n = np.arange(16)
    want = np.asarray(nf4_level(jnp.asarray(np.where(n >= 8, n - 16, n), jnp.bfloat16), levels)).view(np.uint16)
    code = np.where(n >= 8, n - 16, n) + 8  # the kernel holds v = code - 8; n is v's raw nibble
    np.testing.assert_array_equal(want, np.asarray(np.asarray(levels, np.float32)[code], jnp.bfloat16).view(np.uint16))
    np.testing.assert_array_equal(P.level_bits(levels), want)
    assert P.prmt_np(0x33221100, 0x77665544, 0x7531) == 0x77553311 and P.prmt_np(0x80, 0, 0x8) == 0x808080FF
    regs = np.arange(1 << 16)
    nib = (regs[:, None] >> (4 * np.arange(4))) & 15
    got = np.concatenate([(w[:, None] >> np.array([0, 16], np.uint64)) & np.uint64(0xFFFF)
                          for w in P.run_np(regs, levels)], 1)
    np.testing.assert_array_equal(got, want[nib])
    words = np.random.default_rng(0).integers(0, 1 << 32, 4096, dtype=np.uint64)
    nib8 = (words[:, None] >> (np.uint64(4) * np.arange(8, dtype=np.uint64))) & np.uint64(15)
    np.testing.assert_array_equal(P.decode_word_np(words, levels), want[nib8.astype(int)])


@pytest.mark.parametrize("spec", ["nf4", "phi4"])
def test_whole_word_lookup_is_the_two_half_lookups(spec):
    """PROGRAM_WORD (one block a word, nf4.words8) gives the eight levels of a word exactly as PROGRAM run on the word
    and on word >> 16: every 16-bit pattern in either half (the other half random), and random words; it spends 22
    instructions where the two half-word runs take 2 x 12 + 1 (the shift between them)."""
    levels = lut_levels(parse_method(spec))
    rng = np.random.default_rng(1)
    pat = np.arange(1 << 16, dtype=np.uint64)
    other = rng.integers(0, 1 << 16, pat.size, dtype=np.uint64)
    words = np.concatenate([pat | other << np.uint64(16), other | pat << np.uint64(16),
                            rng.integers(0, 1 << 32, 4096, dtype=np.uint64)])
    got = np.stack([(w[:, None] >> np.array([0, 16], np.uint64)) & np.uint64(0xFFFF)
                    for w in P.run_np(words, levels, P.PROGRAM_WORD)], 1).reshape(-1, 8)
    np.testing.assert_array_equal(got.astype(np.uint16), P.decode_word_np(words, levels))
    assert len(P.PROGRAM_WORD) == 22 < 2 * len(P.PROGRAM) + 1
    assert sum(op == "prmt" for op, _, _ in P.PROGRAM_WORD) == 2 * sum(op == "prmt" for op, _, _ in P.PROGRAM)
    text = P.ptx(levels, P.PROGRAM_WORD)
    assert text.count(";") - 1 == 22 and "$4" in text and "$5" not in text and all(f"${j}" in text for j in range(4))


def test_the_kernels_ptx_is_the_program():
    """ptx() writes one instruction per PROGRAM step (what run_np runs), the tables as immediates."""
    lines = P.ptx().split("\n")
    assert lines[0] == "{" and lines[-1] == "}" and lines[1].startswith(".reg .b32 ")
    body = lines[2:-1]
    assert len(body) == len(P.PROGRAM)
    for line, (op, dst, args) in zip(body, P.PROGRAM):
        assert line.startswith(f"{op}.") and line.endswith(";") and line.count(",") == len(args)
    hi, lo = P.tables()
    assert all(f"0x{w:08x}" in P.ptx() for w in hi + lo)
    assert "$0" in body[-2] and "$1" in body[-1] and all("$2" in x for x in body[:2])


@pytest.mark.parametrize("shape", [(64, 64), (128, 64), (64, 128), (64, 256), (128, 256)])
def test_word_relayout_bookkeeping_is_a_bijection(shape):
    """nf4_words.wgmma_sources (the register bookkeeping of Mosaic GPU's two int4 relayout steps, done on i32
    words): every WGMMA-layout register of a (wg_rows, group) tile the kernel loads has one source, every nibble
    pair of every UPCAST_4X word feeds exactly one register, and the 2X -> WGMMA pairing joins the two halves of
    one word in order (it raises otherwise)."""
    from jax.experimental.mosaic.gpu import fragmented_array as fa

    from pallas_kernels.quant.nf4_words import wgmma_sources

    src = wgmma_sources(shape)
    assert src.shape == fa.WGMMA_LAYOUT.registers_shape(shape)
    words = list(np.ndindex(fa.WGMMA_LAYOUT_UPCAST_4X.registers_shape(shape)))
    assert sorted(src.flat) == sorted((w, p) for w in words for p in range(4))
    # per thread of the warpgroup (128): 2 elements a register, the whole tile over the 128 threads
    assert 2 * src.size * 128 == shape[0] * shape[1]


@pytest.mark.parametrize("shape", [(64, 64), (128, 128)])
def test_word_relayout_puts_every_nibble_where_wgmma_reads_it(shape):
    """The lookup's relayout, simulated for a whole warpgroup: every UPCAST_4X word holds its eight elements'
    coordinates (per byte: low nibble, high nibble), the two steps (shuffle by lane distance 2 + prmt, then 1 +
    prmt, with nf4_words' permutes) run on all 128 threads, and each WGMMA-layout register that wgmma_sources
    assigns to a (word, nibble pair) holds exactly the coordinates the WGMMA layout gives that register."""
    from jax.experimental.mosaic.gpu import fragmented_array as fa

    from pallas_kernels.quant.nf4_words import STEP_2X_WGMMA, STEP_4X_2X, layout_coords, wgmma_sources

    l4, lw = fa.WGMMA_LAYOUT_UPCAST_4X, fa.WGMMA_LAYOUT
    words = {(t, idx): layout_coords(l4, shape, t, idx)  # 8 nibbles = 4 bytes of 2 elements each
             for t in range(128) for idx in np.ndindex(l4.registers_shape(shape))}

    def step(state, spec, first):
        dist, perm_first, perm_other = spec
        out = {}
        for (t, idx), w in state.items():
            other = state[(t ^ dist, idx)]  # shfl.bfly within the warp
            sel = perm_first if first(t) else perm_other
            src = [w[2 * i:2 * i + 2] for i in range(4)] + [other[2 * i:2 * i + 2] for i in range(4)]
            out[(t, idx)] = [e for i in range(4) for e in src[sel >> (4 * i) & 0xF]]
        return out

    relaid = step(step(words, STEP_4X_2X, lambda t: t % 4 < 2), STEP_2X_WGMMA, lambda t: t % 2 == 0)
    sources = wgmma_sources(shape)
    for t in range(128):
        for reg, (word, part) in np.ndenumerate(sources):
            assert relaid[(t, word)][2 * part:2 * part + 2] == layout_coords(lw, shape, t, reg), (t, reg)


@pytest.mark.parametrize("shape", [(64, 64), (128, 64), (64, 128), (128, 256)])
def test_shuffled_codes_need_no_relayout(shape):
    """Codes stored in nf4_words.column_order (stored column c = the weight's column order[c], every row): a tile
    of any plan's shape (64 or 128 rows, groups of 64-256 columns) loaded in WGMMA_UPCAST_4X holds, unmoved, what
    each WGMMA register reads (the words the lookup takes with relayout=False)."""
    from jax.experimental.mosaic.gpu import fragmented_array as fa

    from pallas_kernels.quant.nf4_words import column_order, layout_coords, wgmma_sources

    order = column_order(shape[1])
    assert sorted(order) == list(range(shape[1]))
    for t in range(128):
        for reg, (word, part) in np.ndenumerate(wgmma_sources(shape)):
            held = layout_coords(fa.WGMMA_LAYOUT_UPCAST_4X, shape, t, word)[2 * part:2 * part + 2]
            assert [(r, int(order[c])) for r, c in held] == layout_coords(fa.WGMMA_LAYOUT, shape, t, reg)


def test_bookkeeping_refuses_layouts_it_does_not_follow(monkeypatch):
    """Where Mosaic GPU's layouts break nf4_words' assumptions, column_order says so (KernelLayoutError naming the
    fallback) instead of returning a wrong order: here a source map whose two row halves are swapped (axis 4 of the
    WGMMA registers: rows r and r + 8 of each 16-row tile)."""
    from pallas_kernels.quant import nf4_words as W
    from pallas_kernels.quant.layout import KernelLayoutError

    real = W.wgmma_sources
    monkeypatch.setattr(W, "wgmma_sources", lambda shape: real(shape)[:, :, :, :, ::-1])
    W._column_order_64.cache_clear()  # computed once a process: from the patched map here, the real one after
    try:
        with pytest.raises(KernelLayoutError, match="shuffle=True"):
            W.column_order(64)
    finally:
        W._column_order_64.cache_clear()
