"""Imports run one way and never in a circle (shared rule of the house): a static walk of every `import` and
`from ... import` statement of our modules, those inside functions included, plus an import of each module.

PACKAGES is the part of the tree held to the rule: all of it. LAYERS says what a package may import of ours;
ENTRY_POINTS (train, eval, bench, studies, serve) are imported by nothing of ours (tests and notebooks excepted).

Edges: `import a.b.c` -> a.b.c; `from a.b import c` -> a.b.c when that is a module, else a.b; relative imports
resolved against the importing module. Parent packages that Python runs first (a/__init__, a/b/__init__) are
not edges: a package __init__ importing its own submodules is the ordinary pattern, not a circle.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("hqf_jax", "pallas_kernels", "train", "eval", "bench", "studies", "serve", "configs")  # ours
PACKAGES = TOP_LEVEL
ENTRY_POINTS = ("train", "eval", "bench", "studies", "serve")
LEAVES = ("hqf_jax.errors",)  # import nothing of ours, so any layer may import them
LAYERS = {  # package -> the packages of ours it may import (its own and LEAVES included)
    "hqf_jax.ops": ("hqf_jax.ops",),
    "pallas_kernels": ("pallas_kernels", "hqf_jax.ops"),
    **{leaf: () for leaf in LEAVES},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    """Every python module of ours: dotted name -> file."""
    out = {}
    for top in TOP_LEVEL:
        if (ROOT / top).is_dir():
            out.update({_module_name(p): p for p in (ROOT / top).rglob("*.py")})
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is one of our modules."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in modules:
            return cand
    return None


def imports_of(mod: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that `mod` imports anywhere in its file (module level, functions, classes)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: against the package of mod
                pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [f"{base}.{a.name}" for a in node.names]  # a module when it is one, else base below
        for t in targets:
            r = _resolve(t, modules)
            if r is not None and r != mod:
                out.add(r)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _in(mod: str, packages) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in packages)


def _path_in_cycle(graph, comp: list[str]) -> list[str]:
    """One circle through the component, for the error message."""
    start, members = comp[0], set(comp)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in members)
        back = [w for w in nxt if w in seen]
        if back:
            return path[path.index(back[0]):] + [back[0]]
        path.append(next(w for w in nxt if w not in seen))
        seen.add(path[-1])


def test_the_walk_sees_a_circle():
    """The checker itself: a circle through a function-level import is found, a one-way chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert _path_in_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    src = ROOT / "pallas_kernels" / "quant" / "dispatch.py"
    assert "pallas_kernels.quant.gemv" in imports_of("pallas_kernels.quant.dispatch", src, all_modules())
    lin = ROOT / "hqf_jax" / "quant" / "linear.py"  # its kernel imports sit inside functions
    assert "pallas_kernels.quant.layout" in imports_of("hqf_jax.quant.linear", lin, all_modules())


def test_no_import_cycle():
    graph = import_graph()
    bad = [c for c in cycles(graph) if any(_in(m, PACKAGES) for m in c)]
    assert not bad, "import circles (break each by moving the shared piece down a layer):\n" + "\n".join(
        " -> ".join(_path_in_cycle(graph, c)) for c in bad)


def test_layers_import_only_downward():
    graph = import_graph()
    wrong = [f"{m} imports {t}" for m, ts in sorted(graph.items()) for pkg, allowed in LAYERS.items()
             if _in(m, (pkg,)) for t in sorted(ts) if not _in(t, allowed + LEAVES) or (m in LEAVES and t != m)]
    assert not wrong, "imports against the layer order (ops -> kernels -> modules):\n" + "\n".join(wrong)


def test_entry_points_are_imported_by_nothing():
    """A helper two scripts share lives in the library, never in one script that the other imports."""
    graph = import_graph()
    wrong = [f"{m} imports {t}" for m, ts in sorted(graph.items()) for t in sorted(ts)
             if _in(t, ENTRY_POINTS) and not _in(m, ("tests",))]
    assert not wrong, "entry points imported from elsewhere (move the shared piece into hqf_jax):\n" + "\n".join(wrong)


@pytest.mark.parametrize("package", ("hqf_jax.ops", "hqf_jax.quant", "pallas_kernels"))
def test_every_module_imports(package):
    mods = sorted(m for m in all_modules() if _in(m, (package,)))
    assert mods
    for m in mods:
        importlib.import_module(m)
