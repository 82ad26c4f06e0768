"""LangGraph integration: MemOS as the agent's store, memory nodes, tools and middleware.

graph.compile(store=MemOSStore(mem))            # long-term memory in one line
builder.add_node("recall", recall_node(mem))    # and more with our nodes
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader as lazy

if TYPE_CHECKING:
    from .middleware import MemOSMiddleware
    from .nodes import (
        publish_node,
        recall_node,
        remember_node,
        schedule_node,
        subscribe_node,
    )
    from .remote import MemOSRemoteStore
    from .store import MemOSStore
    from .tools import memory_tools

__getattr__, __dir__, __all__ = lazy.attach(
    __name__,
    submod_attrs={
        "store": ["MemOSStore"],
        "remote": ["MemOSRemoteStore"],
        "nodes": [
            "recall_node",
            "remember_node",
            "publish_node",
            "subscribe_node",
            "schedule_node",
        ],
        "tools": ["memory_tools"],
        "middleware": ["MemOSMiddleware"],
    },
)
