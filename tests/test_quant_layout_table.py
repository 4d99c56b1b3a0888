"""The quantized-matmul dispatcher's first level (pallas_kernels/quant/layout_table.py): the LAYOUTS table picks the
Hopper layout or the Triton layout by method, shape, decode batch and device, and QuantLinear(impl="auto") follows
it (the reference on a CPU), keeping the Triton forms for a layer the Hopper form cannot take."""

import jax
import pytest

from pallas_kernels.quant import mosaic as M
from tests.quant_cases import check_product, quant_case

_case, _check = quant_case, check_product


def test_layout_table_picks_by_method_shape_batch_and_device():
    """The dispatcher's first level (layout_table.py): the Hopper layout only for the codes it holds (int4, int8,
    NF4, phi4) on a Hopper GPU, and there by the table's first matching row of that method and code width; the
    shipped table ends with a row for anything."""
    from pallas_kernels.quant.layout_table import LAYOUTS, Layout, layout_form

    assert LAYOUTS[-1] == Layout("*", 1, "triton")
    table = (Layout("int", 8, "mosaic", (512, 256)), Layout("int", 1, "triton", (512, 256)),
             Layout("int", 1, "mosaic"), Layout("*", 1, "triton"))
    form = lambda m, bits, k, n, b, hop=True: layout_form(m, bits, k, n, b, hop, table)  # noqa: E731
    assert form("int", 4, 512, 256, 8) == "mosaic" and form("int", 4, 512, 256, 4) == "triton"
    assert form("int", 4, 256, 256, 1) == "mosaic"  # below the shape bound: the general int row
    assert form("nf4", 4, 4096, 4096, 64) == "triton"
    assert form("int", 8, 4096, 4096, 64) == "triton" and form("phi", 4, 4096, 4096, 64) == "triton"
    assert form("int", 4, 512, 256, 8, hop=False) == "triton"
    wide = (Layout("int", 8, "mosaic", bits=8), Layout("phi", 1, "mosaic"), Layout("*", 1, "triton"))
    by = lambda m, bits, b: layout_form(m, bits, 4096, 4096, b, True, wide)  # noqa: E731
    assert [by("int", 8, 8), by("int", 8, 4), by("int", 4, 8)] == ["mosaic", "triton", "triton"]  # a row's width
    assert [by("phi", 4, 1), by("phi", 5, 1), by("int", 3, 8)] == ["mosaic", "triton", "triton"]  # codes it holds
    with pytest.raises(ValueError, match="batch=0"):
        form("int", 4, 512, 256, 0)
    assert layout_form("int", 4, 4096, 11008, 16, True) == "mosaic"  # the shipped table's measured row
    assert [layout_form("int", 4, 768, 2560, b, True) for b in (1, 8)] == ["triton", "mosaic"]
    # int4 at batch 1: the GEMV on 4096x4096 (faster there in the same process), the Hopper form on the wider shapes
    assert [layout_form("int", 4, k, n, 1, True) for k, n in ((4096, 4096), (4096, 11008), (11008, 4096))] == [
        "triton", "mosaic", "mosaic"]
    assert [layout_form("int", 4, 4096, 4096, b, True) for b in (2, 16, 64)] == ["mosaic"] * 3
    assert [layout_form("int", 4, k, n, 1, True) for k, n in ((8192, 8192), (4096, 8192), (6144, 4096))] == [
        "mosaic"] * 3  # only exactly 4096x4096 (of the shapes from 4096) keeps the GEMV at batch 1
    assert [layout_form("nf4", 4, 4096, 11008, b, True) for b in (1, 4, 64)] == ["mosaic", "mosaic", "mosaic"]
    assert layout_form("nf4", 4, 4096, 4096, 1, True) == "triton"
    assert [layout_form("nf4", 4, 4096, 4096, b, True) for b in (3, 4, 8)] == ["triton", "mosaic", "mosaic"]
    assert [layout_form("nf4", 4, 11008, 4096, b, True) for b in (1, 4)] == ["mosaic", "mosaic"]
    assert [layout_form("int", 8, 2048, 5632, b, True) for b in (1, 8)] == ["triton", "mosaic"]
    assert [layout_form("int", 8, k, n, 1, True) for k, n in ((4096, 11008), (11008, 4096), (4096, 4096))] == [
        "mosaic", "mosaic", "triton"]
    assert [layout_form("phi", bits, 4096, 11008, 1, True) for bits in (4, 5)] == ["mosaic", "triton"]
    # the int8 row from batch 8 holds between the measured shapes too (its comment says so)
    assert [layout_form("int", 8, 4096, 4096, b, True) for b in (4, 8)] == ["triton", "mosaic"]


def test_auto_impl_follows_the_table(monkeypatch):
    """QuantLinear(impl="auto"): reference on a CPU; on a GPU the table's layout (here a stand-in Hopper GPU whose
    table sends this small int4 weight to the Hopper form at batch >= 8), the Triton forms otherwise."""
    from hqf_jax.quant import model as QM
    from pallas_kernels.quant import layout_table as L

    _, q = _case("int4", 256, 128, 1)
    assert QM.auto_impl(q, 8) in (("reference",) if jax.default_backend() == "cpu" else ("mosaic", "pallas"))
    monkeypatch.setattr(QM.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(L, "hopper", lambda: True)
    monkeypatch.setattr(L, "LAYOUTS", (L.Layout("int", 8, "mosaic", (256, 128)), L.Layout("*", 1, "triton")))
    assert QM.auto_impl(q, 8) == "mosaic" and QM.auto_impl(q, 2) == "pallas"
    assert QM.QuantLinear(q, "auto", interpret=True, batch=8).impl == "mosaic"
    _, q8 = _case("int8", 256, 128, 1)
    assert QM.auto_impl(q8, 8) == "pallas"  # the int row is a 4-bit row
    # each QTensor's code width reaches the table: int8's bits, a φ-grid's index bits (phi5u8: 5, not a default 4)
    monkeypatch.setattr(L, "LAYOUTS", (L.Layout("int", 1, "mosaic", bits=8), L.Layout("phi", 1, "mosaic"),
                                       L.Layout("*", 1, "triton")))
    (_, p4), (_, p5) = _case("phi4", 256, 128, 1), _case("phi5u8", 256, 128, 1)
    assert [QM.auto_impl(q, 1) for q in (q8, p4, p5, q)] == ["mosaic", "mosaic", "pallas", "pallas"]


@pytest.mark.parametrize("spec,k,n", [("int4:group_size=32", 256, 128), ("int4", 256, 96)])
def test_auto_falls_back_to_the_triton_forms_where_the_hopper_form_cannot_take_the_layer(monkeypatch, spec, k, n):
    """A table row that sends a layer to the Hopper form the form cannot take (groups of 32; 96 outputs, not a
    multiple of 128): QuantLinear(impl="auto") keeps the Triton forms (KernelLayoutError), and computes the product."""
    from hqf_jax.quant import model as QM
    from pallas_kernels.quant import layout_table as L

    x, q = _case(spec, k, n, 2)
    monkeypatch.setattr(QM.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(L, "hopper", lambda: True)
    monkeypatch.setattr(L, "LAYOUTS", (L.Layout("int", 1, "mosaic"),))
    assert QM.auto_impl(q, 8) == "mosaic"
    lin = QM.QuantLinear(q, "auto", interpret=True, batch=8)
    assert lin.impl == "pallas" and not isinstance(lin.weight.get_value(), M.MosaicWeight)
    monkeypatch.undo()
    _check(lin(x), x, q)
