"""The memos-agents server: REST (`/v1`), the LangGraph store API (`/store`) and MCP (`/mcp`)
over one `MemOS` and its gate; identity comes from the bearer key (`memos_agents.keys`).

`create_app(mem)` builds the ASGI app; `memos-agents serve` runs it under uvicorn."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
