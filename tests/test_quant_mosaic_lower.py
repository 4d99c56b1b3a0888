"""The Hopper kernel (pallas_kernels/quant/mosaic.py) lowered for CUDA on this CPU machine.

Mosaic GPU builds the kernel's IR in Python when it lowers (FragmentedArray layouts and relayouts, the inline
PTX of the lookups), so ``jit(...).trace(...).lower(lowering_platforms=("cuda",))`` runs all of it without a GPU;
only the PTX compile and the numbers need one (tests/test_quant_mosaic.py, marked gpu). The kernel travels as MLIR
bytecode in the ``mosaic_gpu`` custom call's backend config; ``kernel_ops`` reads it back the way Mosaic GPU writes
it (its serde pass, inverted; a private API: a jax upgrade that moves it fails here loudly) and counts the ops and
the inline asm strings, so each variant is checked for what it emits: the table lookup (nf4_prmt.ptx of the
weight's own levels, once per four codes a thread holds or, for nf4="words8", per eight), the relayout the words
lookup runs on (or skips, for shuffled codes), the select tree, the wgmma count. A tile handed to a lookup in the wrong layout fails here,
where tracing alone (jax.eval_shape) passes.
"""

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.quant import mosaic as M
from pallas_kernels.quant.nf4_prmt import PROGRAM_WORD, ptx
from tests.quant_cases import mosaic_abstract

K, N = 512, 256
THREADS = 128  # one compute warpgroup holds a (wg_rows, g) tile: wg_rows * g / 128 codes a thread
RELAYOUT_PRMT = "prmt.b32 $0, $1, $2, $3;"  # mosaic_gpu.utils.prmt: the relayout steps' byte permute


def _lowered(spec, b, blocks, shuffle=False):
    x = jax.ShapeDtypeStruct((b, K), jnp.bfloat16)
    mw = mosaic_abstract(spec, K, N, shuffle=shuffle)
    fn = jax.jit(lambda x, mw: M.mosaic_matmul(x, mw, blocks))
    return fn.trace(x, mw).lower(lowering_platforms=("cuda",)), mw


def _walk(op, visit):
    visit(op.operation)
    for region in op.operation.regions:
        for block in region:
            for child in block:
                _walk(child, visit)


def custom_calls(lowered) -> list:
    """The stablehlo.custom_call ops of a lowered jit."""
    calls = []
    _walk(lowered.compiler_ir("stablehlo"), lambda o: calls.append(o) if o.name == "stablehlo.custom_call" else 0)
    return calls


def kernel_ops(call):
    """(op-name counts, inline-asm-string counts, the ops themselves by name) of the Mosaic GPU kernel in a
    mosaic_gpu custom call."""
    from jax._src.interpreters import mlir
    from jax._src.lib.mlir import ir
    from jax.experimental.mosaic.gpu import core, dialect

    code = ir.StringAttr(ir.DictAttr(call.attributes["mhlo.backend_config"])["module"]).value_bytes
    ctx = mlir.make_ir_context()
    dialect.register_dialect(ctx)
    ctx.allow_unregistered_dialects = True
    names, asms, by_name = collections.Counter(), collections.Counter(), collections.defaultdict(list)
    with ctx, ir.Location.unknown():
        module = core._run_serde_pass(ir.Module.parse(code), serialize=False)

        def visit(op):
            names[op.name] += 1
            by_name[op.name].append(op)
            if op.name == "llvm.inline_asm":
                asms[ir.StringAttr(op.attributes["asm_string"]).value] += 1

        _walk(module, visit)
        # what feeds each lookup: (defining op, and for a ">> 16" the op under it), read while the context lives
        feeds = collections.Counter()
        for op in by_name["llvm.inline_asm"]:
            asm = ir.StringAttr(op.attributes["asm_string"]).value
            if "0x7777" not in asm:
                continue
            src = op.operands[0].owner
            if src.name == "arith.shrui":
                src = src.operands[0].owner
            feeds[src.name == "llvm.inline_asm" and ir.StringAttr(src.attributes["asm_string"]).value] += 1
    return names, asms, feeds


CASES = [  # (spec, batch, blocks, shuffled): test_kernel_traces' variants, the words lookup and shuffled codes
    ("int4", 16, M.MosaicBlocks(), False),
    ("nf4", 16, M.MosaicBlocks(nf4="select"), False),
    ("nf4", 16, M.MosaicBlocks(nf4="prmt"), False),
    ("nf4", 16, M.MosaicBlocks(), False),  # nf4="words", the default
    ("phi4", 16, M.MosaicBlocks(), False),
    ("nf4", 16, M.MosaicBlocks(), True),
    ("nf4", 16, M.MosaicBlocks(nf4="words8"), False),
    ("phi4", 32, M.MosaicBlocks(nf4="words8", wg_rows=128), True),
    ("phi4", 32, M.MosaicBlocks(wg_rows=128, acc="value"), True),
    ("int4z:group_size=128", 37, M.MosaicBlocks(split_k=2), False),
    ("nf4", 8, M.MosaicBlocks(groups=2, split_k=1, acc="ref"), False),
    ("int4", 64, M.MosaicBlocks(wg_rows=128, acc="value"), False),
    ("nf4", 64, M.MosaicBlocks(wg_rows=128, acc="value", nf4="prmt"), False),
    ("nf4:group_size=256", 40, M.MosaicBlocks(nf4="prmt", wg_rows=64), False),
    ("nf4", 128, M.MosaicBlocks(probe="no_decode"), False),
    ("int4z", 40, M.MosaicBlocks(probe="copy", acc="value"), False),
    ("int8", 16, M.MosaicBlocks(), False),
    ("int8:symmetric=false:group_size=128", 40, M.MosaicBlocks(split_k=2, acc="value"), False),
]
I8_TO_BF16 = "0xff7fff7f"  # the mask in Mosaic GPU's int8 -> bf16 conversion (prmt/and/and/sub), one per two codes


@functools.lru_cache(maxsize=None)
def _case(i):
    spec, b, blocks, shuffle = CASES[i]
    lowered, mw = _lowered(spec, b, blocks, shuffle)
    return lowered, mw, M.resolve(mw, b, blocks)


def _id(case) -> str:
    spec, b, blocks, shuffle = case
    changed = [f"{f.name}={getattr(blocks, f.name)}" for f in dataclasses.fields(blocks)
               if getattr(blocks, f.name) != f.default]
    return "-".join([spec, f"b{b}", *changed, *(["shuffled"] if shuffle else [])])


@pytest.mark.parametrize("i", range(len(CASES)), ids=[_id(c) for c in CASES])
def test_kernel_lowers_for_cuda(i):
    """One mosaic_gpu call a kernel with its (split_k, N, padded batch) float32 partials; the output (B, N) in
    x's dtype; the kernel emits per group and compute warpgroup wg_rows * g / 16 / 64 wgmma instructions and
    the decode its variant names: the lookup (ptx of the weight's levels) once per four codes a thread holds (per
    eight: words8), on
    the relaid words or (shuffled codes) with no relayout at all, the select tree's 15 compares per register of
    two codes, or nothing of either (int codes, probes); int8 codes convert by Mosaic's prmt/and/sub, one
    conversion per two codes, after the same count of relayout permutes as int4."""
    _, b, _, shuffle = CASES[i]
    lowered, mw, r = _case(i)
    assert lowered.out_info.shape == (b, N) and lowered.out_info.dtype == jnp.bfloat16
    [call] = [c for c in custom_calls(lowered) if "mosaic_gpu" in c.attributes["call_target_name"].value]
    from jax._src.lib.mlir import ir

    out = ir.RankedTensorType(call.result.type)
    assert tuple(out.shape) == (r.split_k, N, -(-b // r.block_b) * r.block_b) and str(out.element_type) == "f32"
    names, asms, feeds = kernel_ops(call)
    codes = r.groups * r.wg_rows * mw.group // THREADS  # codes a thread decodes per pipeline step
    wgmma = sum(n for a, n in asms.items() if "wgmma.mma_async" in a)
    assert wgmma == (0 if r.probe == "copy" else r.groups * mw.group // 16 * r.wg_rows // 64)
    decodes = r.probe == "none"
    table = decodes and mw.levels is not None
    whole = r.nf4 == "words8"  # one lookup block a word of eight codes, else a half word of four
    looked = asms[ptx(mw.levels, PROGRAM_WORD) if whole else ptx(mw.levels)] if mw.levels is not None else 0
    assert looked == (codes // (8 if whole else 4) if table and r.nf4 in ("words", "words8", "prmt") else 0)
    assert sum(n for a, n in asms.items() if "0x7777" in a) == looked  # no lookup with another table
    assert names["arith.cmpf"] == (15 * codes // 2 if table and r.nf4 == "select" else 0)
    assert sum(n for a, n in asms.items() if I8_TO_BF16 in a) == (codes // 2 if decodes and mw.bits == 8 else 0)
    if table and r.nf4 in ("words", "words8"):
        # the words lookup reads whole relaid 32-bit words: two relayout prmts a word, none for shuffled codes
        assert asms[RELAYOUT_PRMT] == (0 if shuffle else 2 * codes // 8)
        assert feeds[RELAYOUT_PRMT if not shuffle else False] == looked
    elif decodes:  # the int4 -> WGMMA relayout is Mosaic GPU's own (layout_cast)
        assert asms[RELAYOUT_PRMT] == 2 * codes // 8


def test_levels_reach_the_kernel():
    """NF4 and the 4-bit φ-grid lower to lookups with different immediates: the tables are the weight's own."""
    nf4, phi = (kernel_ops(custom_calls(_lowered(s, 16, M.MosaicBlocks(nf4="words"))[0])[0])[1] for s in ("nf4", "phi4"))
    phi_levels = mosaic_abstract("phi4", K, N).levels
    assert ptx(phi_levels) != ptx() and nf4[ptx()] > 0 and phi[ptx(phi_levels)] > 0
    assert phi[ptx()] == 0 and nf4[ptx(phi_levels)] == 0


def _cast_then(fn, layout):
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return lambda w, *args, **kw: fn(plgpu.layout_cast(w, getattr(plgpu.Layout, layout)), *args, **kw)


@pytest.mark.parametrize("lookup,nf4,layout,error,match", [
    ("nf4_levels_words", "words", "WGMMA", ValueError, "expected: Layout.WGMMA_UPCAST_4X"),
    ("nf4_levels_words", "words", "WGMMA_UPCAST_2X", ValueError, "expected: Layout.WGMMA_UPCAST_4X"),
    ("nf4_levels_prmt", "prmt", "WGMMA_UPCAST_2X", NotImplementedError, "Cannot convert from"),
])
def test_wrong_tile_layout_fails_at_lowering(monkeypatch, lookup, nf4, layout, error, match):
    """A lookup handed its tile in another layout: the words lookup takes the load's WGMMA_UPCAST_4X words and
    refuses a tile relaid to WGMMA or half-way (WGMMA_UPCAST_2X); a tile relaid for the prmt lookup (WGMMA) and
    then cast back to an upcast layout has no relayout in Mosaic GPU. Tracing passes; lowering on CPU raises."""
    monkeypatch.setattr(M, lookup, _cast_then(getattr(M, lookup), layout))
    x = jax.ShapeDtypeStruct((16, K), jnp.bfloat16)
    mw = mosaic_abstract("nf4", K, N)
    blocks = M.MosaicBlocks(nf4=nf4)
    assert jax.eval_shape(lambda x, mw: M.mosaic_matmul(x, mw, blocks), x, mw).shape == (16, N)
    with pytest.raises(error, match=match):
        _lowered("nf4", 16, blocks)


@pytest.mark.parametrize("pad_x,b,rows", [(True, 1, 16), (False, 1, 1), (False, 5, 5), (False, 37, 40),
                                           (False, 40, 40), (True, 37, 64), (None, 1, 1), (None, 8, 16)])
def test_unpadded_x_reaches_the_kernel_as_it_is(pad_x, b, rows):
    """MosaicBlocks(pad_x=False): no XLA pad before the call at batch <= 8 or a multiple of 8, the kernel's x
    operand is x itself (5 groups of K against the plan's 6), its copies reading past both ends (TMA fills zeros);
    other batches are padded to a multiple of 8 rows only (Mosaic tiles x by 8 rows: 37 unpadded does not lower).
    pad_x=True pads x to the batch tile and the plan's K first. The default (None) reads x unpadded below batch 8
    and pads it from 8."""
    x = jax.ShapeDtypeStruct((b, 320), jnp.bfloat16)
    mw = mosaic_abstract("int4", 320, N, plan=M.Plan(64, 1, 3, 6))
    lowered = jax.jit(lambda x, mw: M.mosaic_matmul(x, mw, M.MosaicBlocks(pad_x=pad_x))).trace(x, mw).lower(
        lowering_platforms=("cuda",))
    from jax._src.lib.mlir import ir

    [call] = [c for c in custom_calls(lowered) if "mosaic_gpu" in c.attributes["call_target_name"].value]
    padded = pad_x if pad_x is not None else b >= 8
    assert tuple(ir.RankedTensorType(call.operands[0].type).shape) == (rows, 384 if padded else 320)
    assert ("stablehlo.pad" in lowered.as_text()) == (rows != b)
    assert lowered.out_info.shape == (b, N)


def test_layers_of_one_shape_lower_the_kernel_once(monkeypatch):
    """qlinear's Hopper form goes through a jitted entry, so a program with many layers of one shape lowers the
    Mosaic GPU kernel once per shape: three calls over two shapes give two mosaic_gpu custom calls (the un-jitted
    call gave one per call site: 96 in a 125M int4 decode step)."""
    from hqf_jax.quant.linear import qlinear

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # qlinear refuses "mosaic" on a CPU backend
    x = jax.ShapeDtypeStruct((8, K), jnp.bfloat16)
    ws = [mosaic_abstract("int4", K, N), mosaic_abstract("int4", K, N), mosaic_abstract("int4", K, 2 * N)]
    lowered = jax.jit(lambda x, ws: [qlinear(x, w, "mosaic") for w in ws]).trace(x, ws).lower(
        lowering_platforms=("cuda",))
    calls = [c for c in custom_calls(lowered) if "mosaic_gpu" in c.attributes["call_target_name"].value]
    assert len(calls) == 2
    assert [o.shape for o in lowered.out_info] == [(8, N), (8, N), (8, 2 * N)]
