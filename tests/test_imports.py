"""The package's import graph has no circle, counting imports inside functions as well as at module level."""

from __future__ import annotations

import ast
from pathlib import Path

import segladder

PACKAGE = Path(segladder.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module → the segladder modules it imports anywhere in its body (`from pkg import sub` counts sub)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.level == 0
                and node.module in modules
            ):
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                named = [a for a in node.names if f"{node.module}.{a.name}" not in modules]
                edges |= subs | ({node.module} if named else set())
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert "segladder.training.build" in graph and "segladder.tasks.base" in graph
    assert cycles(graph) == []


def test_tasks_import_nothing_from_training():
    """training builds tasks; a task's own pieces (its callbacks) live beside it (docs/architecture.md)."""
    graph = import_graph()
    upward = {
        (m, dep)
        for m, deps in graph.items()
        if m.startswith("segladder.tasks")
        for dep in deps
        if dep.startswith("segladder.training")
    }
    assert "segladder.tasks.finetuning" in graph and upward == set()
