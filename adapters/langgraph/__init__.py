"""LangGraph integration: MemOS as the agent's store, memory nodes, tools and middleware.

graph.compile(store=MemOSStore(mem))            # long-term memory in one line
builder.add_node("recall", recall_node(mem))    # and more with our nodes
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .middleware import MemOSMiddleware
    from .nodes import (
        publish_node,
        recall_node,
        remember_node,
        schedule_node,
        subscribe_node,
    )
    from .store import MemOSStore
    from .tools import memory_tools

_EXPORTS = {
    "MemOSStore": "store",
    "recall_node": "nodes",
    "remember_node": "nodes",
    "publish_node": "nodes",
    "subscribe_node": "nodes",
    "schedule_node": "nodes",
    "memory_tools": "tools",
    "MemOSMiddleware": "middleware",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
