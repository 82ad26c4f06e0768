"""LlamaIndex integration: MemOS as chat memory, a memory block and a retriever.

    memory = MemOSMemory.from_defaults(mem=mem, user_id="alice")    # history + recall
    Memory.from_defaults(memory_blocks=[MemOSMemoryBlock(mem=mem, user_id="alice")])
    MemOSRetriever(mem, user_id="alice")                           # memories as nodes
    MemOSLLM(llm=ChatOpenAI(...))      # a LangChain chat model that sends the memory options
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader as lazy

if TYPE_CHECKING:
    from .block import MemOSMemoryBlock
    from .llm import MemOSLLM
    from .memory import MemOSMemory
    from .retriever import MemOSRetriever

__getattr__, __dir__, __all__ = lazy.attach(
    __name__,
    submod_attrs={
        "memory": ["MemOSMemory"],
        "block": ["MemOSMemoryBlock"],
        "retriever": ["MemOSRetriever"],
        "llm": ["MemOSLLM"],
    },
)
