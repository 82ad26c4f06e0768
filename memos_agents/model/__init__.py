"""The local model process: a Hugging Face causal LM serving activation (KV cache) and
parameter (LoRA) memory.

Nothing here imports torch except the modules that run inside the model process
(`engine`, `kv`, `training`, `server`); a MemOS process only speaks HTTP to it. The names
below load on first use, so `import memos_agents.model` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader as lazy

__getattr__, __dir__, __all__ = lazy.attach(
    __name__,
    submod_attrs={
        "chat": ["MemOSChatModel"],
        "client": [
            "ModelClient",
            "ModelProcess",
            "Completion",
            "ModelError",
            "ModelUnavailable",
            "ActivationRefused",
            "ChatRequest",
        ],
        "memory": ["Generation", "lora_name"],
    },
)

if TYPE_CHECKING:
    from .chat import MemOSChatModel
    from .client import (
        ActivationRefused,
        ChatRequest,
        Completion,
        ModelClient,
        ModelError,
        ModelProcess,
        ModelUnavailable,
    )
    from .memory import Generation, lora_name
