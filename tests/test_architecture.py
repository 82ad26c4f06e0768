"""The dependency rule of ARCHITECTURE.md, checked on the source: arrows point down.

Every import of a project module counts, at module level, inside a function or under
`TYPE_CHECKING`. Layers: interface -> operation -> infrastructure; within a layer imports
may go sideways but never in a circle; no private name (`_x`) is imported from another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "memos_agents": ROOT / "memos_agents",
    "memos_agents.langgraph": ROOT / "adapters" / "langgraph",
    "memos_agents.llamaindex": ROOT / "adapters" / "llamaindex",
    "memos_agents.langchain": ROOT / "adapters" / "langchain",
    "memos_agents.graphs": ROOT / "graphs",
}
INFRASTRUCTURE = (
    "errors", "config", "text", "events", "llm", "redaction", "cube", "blobs", "tables", "formats",
    "embeddings",
    "catalog", "settings", "jobs", "vector", "graph", "model.client", "model.chat",
    "model.protocol", "model.runtime", "model.kv", "model.engine", "model.training",
    "model.server", "model.examples", "audit", "keys", "localhost",
)
OPERATION = (
    "reader", "lifecycle", "governance", "operator", "retrieval", "vault", "scheduler",
    "model.memory", "loader", "store",
)
LAYERS = {"infrastructure": 0, "operation": 1, "interface": 2}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            parts = [p for p in f.relative_to(folder).with_suffix("").parts if p != "__init__"]
            out[".".join([pkg, *parts])] = f
    return out


def _layer(module: str) -> str:
    name = module.removeprefix("memos_agents").lstrip(".")
    if name in ("", "model"):  # package fronts: lazy re-exports of what lies below them
        return "interface"
    for layer, prefixes in (("infrastructure", INFRASTRUCTURE), ("operation", OPERATION)):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return layer
    return "interface"


def _imports(name: str, f: Path, known: set[str]) -> tuple[set[str], list[str]]:
    base = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
    deps: set[str] = set()
    private: list[str] = []
    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([mod] if mod else []))
            for alias in node.names:
                full = f"{mod}.{alias.name}"
                if full in known:
                    deps.add(full)
                elif mod in known:
                    deps.add(mod)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{name} imports {mod}.{alias.name}")
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name in known)
    deps.discard(name)
    return deps, private


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    known = set(mods)
    edges, private = {}, []
    for name, f in mods.items():
        edges[name], bad = _imports(name, f, known)
        private += bad
    return edges, private


def test_the_module_map_is_complete(graph) -> None:
    edges, _ = graph
    assert "memos_agents.mos" in edges and "memos_agents.retrieval.router" in edges
    assert _layer("memos_agents.catalog") == "infrastructure"
    assert _layer("memos_agents.retrieval.fusion") == "operation"
    assert _layer("memos_agents.cli.core") == "interface"
    assert _layer("memos_agents.langgraph.store") == "interface"


def test_no_import_points_up(graph) -> None:
    edges, _ = graph
    upward = [
        f"{a} ({_layer(a)}) imports {b} ({_layer(b)})"
        for a, deps in edges.items()
        for b in deps
        if LAYERS[_layer(b)] > LAYERS[_layer(a)]
    ]
    assert upward == []


def test_no_import_cycles(graph) -> None:
    edges, _ = graph
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_private_names_cross_modules(graph) -> None:
    _, private = graph
    assert private == []


def test_domain_modules_import_nothing_from_the_cli(graph) -> None:
    edges, _ = graph
    offenders = [
        a
        for a, deps in edges.items()
        if not a.startswith("memos_agents.cli")
        and any(d.startswith("memos_agents.cli") for d in deps)
    ]
    assert offenders == []
