"""The data-source registry: filled by one import list (catalog), no import circle inside hqf_jax.data."""

import ast
from pathlib import Path

import pytest

import hqf_jax.data
from hqf_jax.data import catalog, registry
from hqf_jax.errors import DataError

DATA = Path(hqf_jax.data.__file__).parent


def _imports(path: Path) -> set[str]:
    """hqf_jax.data modules that ``path`` imports (at any depth of the file, functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "hqf_jax.data":
                out.update(a.name for a in node.names)
            elif node.module.startswith("hqf_jax.data."):
                out.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[2] for a in node.names if a.name.startswith("hqf_jax.data."))
    return out


def test_no_import_circle_in_data():
    graph = {p.stem: _imports(p) for p in DATA.glob("*.py") if p.stem != "__init__"}
    assert graph["registry"] == set(), "the registry imports no source"
    assert not any("catalog" in deps for name, deps in graph.items() if name != "catalog"), "nothing imports catalog back"
    state: dict[str, int] = {}

    def visit(n, path):
        if state.get(n) == 1:
            raise AssertionError(f"import circle: {' -> '.join(path + [n])}")
        if state.get(n) == 2 or n not in graph:
            return
        state[n] = 1
        for m in graph[n]:
            visit(m, path + [n])
        state[n] = 2

    for n in graph:
        visit(n, [])


def test_catalog_registers_every_source_and_unknown_names_the_valid_ones():
    assert {"stdlib", "files", "hf", "music", "digits", "zip"} <= set(registry.SOURCES)
    with pytest.raises(DataError, match="valid sources: .*stdlib"):
        registry.get("nope")
    assert catalog.load_corpus is not None
