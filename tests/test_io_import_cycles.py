"""No import cycles among the IO, phases, pores3d, report and detect modules, deferred imports included.

Every ``import`` statement counts, at module level or inside a function: an import deferred into a
function hides a cycle from Python but not from the reader.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
CHECKED = ("fracscope.io", "fracscope.phases", "fracscope.pores3d", "fracscope.report", "fracscope.detect")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """fracscope module -> the fracscope modules it imports anywhere in its source."""
    files = {_module_name(p): p for p in (SRC / "fracscope").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]], modules: set[str]) -> list[list[str]]:
    """Strongly connected groups of more than one module, within `modules` (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v] & modules:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph, set(graph)) == [["a", "b", "c"]]


def test_no_import_cycles_in_io_phases_pores3d_report_detect():
    graph = import_graph()
    checked = {m for m in graph if m.startswith(CHECKED)} | {"fracscope.types", "fracscope.crop", "fracscope.refine"}
    assert "fracscope.io.prefetch" in graph["fracscope.io.read"]  # the checker sees imports
    assert cycles(graph, checked) == []
