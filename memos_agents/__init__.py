"""memos-agents: a memory operating system for LLM agents.

`import memos_agents` is cheap: names load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "MemOS": "mos",
    "MemOSConfig": "config",
    "MemCube": "cube",
    "SearchHit": "cube",
    "VersionRecord": "cube",
    "Scope": "cube",
    "Form": "cube",
    "State": "cube",
    "MemReader": "reader",
    "MemVault": "vault",
    "MemOSError": "errors",
    "InvalidInput": "errors",
    "NotFound": "errors",
    "ScopeViolation": "errors",
    "ConfigError": "errors",
    "StoreError": "errors",
    "IntegrityError": "errors",
    "ExtractionError": "errors",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:
    from .config import MemOSConfig
    from .cube import Form, MemCube, Scope, SearchHit, State, VersionRecord
    from .errors import (
        ConfigError,
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memos_agents' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
