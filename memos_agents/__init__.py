"""memos-agents: a memory operating system for LLM agents.

`import memos_agents` is cheap: names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader as lazy

__version__ = "0.1.0"

__getattr__, _, _lazy_all = lazy.attach(
    __name__,
    submod_attrs={
        "mos": ["MemOS"],
        "config": ["MemOSConfig"],
        "cube": ["MemCube", "SearchHit", "VersionRecord", "Scope", "Form", "State"],
        "reader": ["MemReader"],
        "vault": ["MemVault"],
        "errors": [
            "MemOSError",
            "InvalidInput",
            "NotFound",
            "ScopeViolation",
            "ConfigError",
            "StoreError",
            "Conflict",
            "IntegrityError",
            "ExtractionError",
        ],
    },
)

__all__ = [*_lazy_all, "__version__"]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from .config import MemOSConfig
    from .cube import Form, MemCube, Scope, SearchHit, State, VersionRecord
    from .errors import (
        ConfigError,
        Conflict,
        ExtractionError,
        IntegrityError,
        InvalidInput,
        MemOSError,
        NotFound,
        ScopeViolation,
        StoreError,
    )
    from .mos import MemOS
    from .reader import MemReader
    from .vault import MemVault
