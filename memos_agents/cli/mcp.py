"""`memos-agents mcp`: the memory tools over MCP on stdin/stdout, for MCP clients that start
their servers as commands (Claude Desktop, Cursor, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import DirOpt, opened

KeyOpt = Annotated[
    str | None,
    typer.Option("--key", envvar="MEMOS_API_KEY", show_envvar=True,
                 help="API key: the tools run as its principal (none: system while the data dir "
                      "has no keys)"),
]


def mcp(data_dir: DirOpt = Path(".memos"), key: KeyOpt = None) -> None:
    """Serve the memory tools (add_memory, search_memory, ...) over MCP on stdio, as the
    principal of --key; stdout carries only the protocol."""
    from ..server.mcp import serve_stdio

    with opened(data_dir) as mem:
        serve_stdio(mem, key)


__all__ = ["mcp"]
