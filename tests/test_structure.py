"""The package's shape: no module imports one that imports it back (counting
imports under ``TYPE_CHECKING``: a circle there is a circle in the design),
and the layers import downwards only: the stores know nothing of metrics,
logs, executors or the HTTP side; the executors nothing of the HTTP side."""

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


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import in a module: at module level, in a function, and under
    ``if TYPE_CHECKING:`` (which never runs, but is a dependency all the
    same: the types a module names are part of what it knows)."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, package) in modules.items():
        for node in _imports(ast.parse(path.read_text())):
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


def test_a_type_checking_import_is_an_edge() -> None:
    tree = ast.parse("if TYPE_CHECKING:\n    from .b import B\n")
    assert [ast.unparse(node) for node in _imports(tree)] == ["from .b import B"]


def _reached(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module ``start`` imports, directly or through others: each
    mapped to the module that imports it on the way, to show the path."""
    via: dict[str, str] = {}
    todo = [start]
    while todo:
        node = todo.pop()
        for target in sorted(graph[node]):
            if target not in via and target != start:
                via[target] = node
                todo.append(target)
    return via


def _path(via: dict[str, str], start: str, end: str) -> str:
    steps = [end]
    while steps[-1] != start:
        steps.append(via[steps[-1]])
    return " -> ".join(reversed(steps))


def _under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


# The HTTP side: the middleware and the modules that answer requests, the
# framework adapters, and the package's own __init__ (which imports the
# middleware).
HTTP_SIDE = (
    "asyncwsgi.middleware",
    "asyncwsgi.http",
    "asyncwsgi.events",
    "asyncwsgi.replay",
    "asyncwsgi.listing",
    "asyncwsgi.prefer",
    "asyncwsgi.contrib",
)
EXECUTORS = ("asyncwsgi.executors", "asyncwsgi.executor", "asyncwsgi.remote")


def _forbidden(layer: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    graph = import_graph()
    found = []
    for name in sorted(graph):
        if not _under(name, *layer):
            continue
        via = _reached(graph, name)
        for target in sorted(via):
            if target == "asyncwsgi" or _under(target, *forbidden):
                found.append(_path(via, name, target))
    return found


def test_no_store_module_imports_metrics_logs_an_executor_or_the_http_side() -> None:
    forbidden = ("asyncwsgi.metrics", "asyncwsgi.logs", *EXECUTORS, *HTTP_SIDE)
    assert _forbidden(("asyncwsgi.stores",), forbidden) == []


def test_no_executor_imports_the_http_side() -> None:
    assert _forbidden(("asyncwsgi.executors",), HTTP_SIDE) == []


def test_the_layer_check_sees_a_path() -> None:
    # The HTTP side reaches the stores through the runner, for one.
    graph = import_graph()
    via = _reached(graph, "asyncwsgi.middleware")
    assert "asyncwsgi.stores.base" in via
    assert _path(via, "asyncwsgi.middleware", "asyncwsgi.stores.base").startswith(
        "asyncwsgi.middleware -> "
    )
    assert _forbidden(("asyncwsgi.runner",), ("asyncwsgi.metrics",)) != []
