"""The package's shape: no module imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "asyncwsgi"


def _modules() -> dict[str, tuple[Path, list[str]]]:
    """Module name -> (file, the package it lives in, as parts)."""
    modules: dict[str, tuple[Path, list[str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["asyncwsgi", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
            modules[".".join(parts)] = (path, parts)
        else:
            modules[".".join(parts)] = (path, parts[:-1])
    return modules


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import that runs (at module level or in a function); those under
    ``if TYPE_CHECKING:`` never do, so they cannot make a cycle."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, package) in modules.items():
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [target, *(f"{target}.{alias.name}" for alias in node.names)]
            else:
                targets = [alias.name for alias in node.names]
            for target in targets:
                # Importing a.b.c runs a.b's __init__ first, unless the
                # importer lives inside a.b (then it is already under way).
                parts = target.split(".")
                for end in range(len(parts), 0, -1):
                    candidate = ".".join(parts[:end])
                    inside = name == candidate or name.startswith(candidate + ".")
                    if candidate in modules and not inside:
                        graph[name].add(candidate)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        pytest.param({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"], id="two"),
        pytest.param({"a": {"b"}, "b": {"c"}, "c": set()}, None, id="none"),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, cycle):
    assert find_cycle(graph) == cycle


def test_the_graph_sees_a_real_edge():
    graph = import_graph()
    assert "asyncwsgi.settings" in graph["asyncwsgi.middleware"]
    # importing asyncwsgi.stores.base from outside runs asyncwsgi.stores first
    assert "asyncwsgi.stores" in graph["asyncwsgi.middleware"]
