"""The store `langgraph.json` names: the LangGraph server's `client.store.*` calls land in
MemOS, as items of `MemOSStore` over the graphs' own MemOS (`server_memos()`)."""

from __future__ import annotations

import asyncio

from memos_agents.graphs.common import server_memos
from memos_agents.langgraph import MemOSStore


async def make_store() -> MemOSStore:
    """A `MemOSStore` (vault "langgraph") over this process's MemOS at `MEMOS_DATA_DIR`, opened
    in a worker thread, off the server's event loop."""
    return MemOSStore(await asyncio.to_thread(server_memos))
