"""The local model process: a Hugging Face causal LM serving activation (KV cache) and
parameter (LoRA) memory.

Nothing here imports torch except the modules that run inside the model process
(`engine`, `kv`, `training`, `server`); a MemOS process only speaks HTTP to it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "MemOSChatModel": "chat",
    "ModelClient": "client",
    "ModelProcess": "client",
    "Completion": "client",
    "ModelError": "client",
    "ModelUnavailable": "client",
    "ActivationRefused": "client",
    "Generation": "memory",
    "lora_name": "memory",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .chat import MemOSChatModel
    from .client import (
        ActivationRefused,
        Completion,
        ModelClient,
        ModelError,
        ModelProcess,
        ModelUnavailable,
    )
    from .memory import Generation, lora_name


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memos_agents.model' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
