"""LlamaIndex integration: MemOS as chat memory, a memory block and a retriever.

    memory = MemOSMemory.from_defaults(mem=mem, user_id="alice")    # history + recall
    Memory.from_defaults(memory_blocks=[MemOSMemoryBlock(mem=mem, user_id="alice")])
    MemOSRetriever(mem, user_id="alice")                           # memories as nodes
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .block import MemOSMemoryBlock
    from .memory import MemOSMemory
    from .retriever import MemOSRetriever

_EXPORTS = {
    "MemOSMemory": "memory",
    "MemOSMemoryBlock": "block",
    "MemOSRetriever": "retriever",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
