"""No import cycles between fracscope modules, imports deferred into functions included.

Read from the source with `ast` (nothing is imported). Every ``import``/``from ... import``
anywhere in a module (top level, function, ``if TYPE_CHECKING``) is an edge from that module
to the module it names. Rules:
- a package is its ``__init__``: ``from fracscope.io import x`` is an edge to ``fracscope.io``
  (the ``__init__``) when ``x`` is a name defined there, and to ``fracscope.io.x`` when ``x`` is a
  submodule; relative imports are resolved against the importing module's package;
- importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``, but those parent edges are
  left out: a package ``__init__`` that re-exports its submodules (``pkg`` → ``pkg.sub``) is
  normal and would otherwise make every ``pkg.sub`` → ``pkg.other`` import a cycle;
- a cycle is a strongly connected component of more than one module (or a module importing itself).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "fracscope"


def module_names(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package (a package is its __init__)."""
    names = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, names: dict[str, Path]) -> set[str]:
    """The project modules one import statement depends on."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if node.level:  # relative: resolved against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join([*package[: len(package) - (node.level - 1)], *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    # `from pkg import sub` depends on the submodule; `from pkg import name` on pkg's __init__.
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names}


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module → the project modules it imports, anywhere in its source."""
    names = module_names(src)
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name] |= {t for t in _imported(node, name, path.name == "__init__.py", names) if t in names}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted, plus self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _edges_within(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    members = set(component)
    return [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in members]


def test_the_checker_finds_a_deferred_cycle_and_resolves_relative_imports(tmp_path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "io").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "io" / "__init__.py").write_text("from .read import read\n")  # re-export: not a cycle
    (pkg / "io" / "read.py").write_text("def read():\n    from fracscope.io import prefetch\n")
    (pkg / "io" / "prefetch.py").write_text("from . import read\n")
    (pkg / "a.py").write_text("import fracscope.b\nfrom fracscope.io import helper\n")  # a name of io/__init__
    (pkg / "b.py").write_text("def f():\n    from .io.read import read\n")
    graph = import_graph(tmp_path)
    assert graph["fracscope.io"] == {"fracscope.io.read"}
    assert graph["fracscope.io.read"] == {"fracscope.io.prefetch"}
    assert graph["fracscope.a"] == {"fracscope.b", "fracscope.io"} and graph["fracscope.b"] == {"fracscope.io.read"}
    assert cycles(graph) == [["fracscope.io.prefetch", "fracscope.io.read"]]


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "fracscope.pipeline" in graph
    found = cycles(graph)
    report = "\n".join(f"cycle {i + 1}: " + "; ".join(_edges_within(graph, c)) for i, c in enumerate(found))
    print(report)
    assert not found, f"{len(found)} import cycle(s) between fracscope modules:\n{report}"
