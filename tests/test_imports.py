"""jenga's imports run one way: no module imports one that imports it back (``TYPE_CHECKING`` and
function-level imports included), read from the source, not by importing."""

from __future__ import annotations

import ast
from pathlib import Path

import jenga

PACKAGE_ROOT = Path(jenga.__file__).parent


def _module_name(path: Path) -> str:
    parts = ("jenga", *path.relative_to(PACKAGE_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """``module -> jenga modules it imports`` (a ``from .pkg import name`` counts ``pkg.name`` when that
    is a module, else ``pkg``); the implicit import of a parent package is not an edge."""
    modules = {_module_name(p): p for p in PACKAGE_ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.split(".")[0] == "jenga")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "jenga":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in modules else target)
        graph[name] = edges - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per back edge found by a depth-first walk."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_graph_sees_the_known_edges():
    graph = _import_graph()
    assert "jenga.config" in graph["jenga.patching"]
    assert "jenga.adapters.base" in graph["jenga.adapters.wan"]
    assert "jenga.kernels.triton_block_sparse" in graph["jenga.attention"]  # a function-level import


def test_import_graph_is_acyclic():
    cycles = _cycles(_import_graph())
    assert not cycles, "import loops: " + "; ".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_loop():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
