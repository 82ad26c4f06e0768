"""Agent tools over MemOS: `search_memory` and `save_memory`.

The user comes from the factory argument or from the run's config / context, never from the
model, so a model cannot read or write another user's memory by naming them.
"""

from __future__ import annotations

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool

from memos_agents.mos import MemOS

from .nodes import require_user, resolve


def memory_tools(
    mem: MemOS,
    *,
    user_id: str | None = None,
    agent_id: str | None = None,
    vault: str | None = None,
    k: int = 5,
) -> list[BaseTool]:
    """`[search_memory, save_memory]` bound to `mem`."""

    @tool
    def search_memory(query: str, config: RunnableConfig) -> str:
        """Search long-term memory about the current user. Returns one memory per line."""
        hits = mem.search(query, user_id=require_user(config, user_id), k=k, vault=vault)
        if not hits:
            return "No matching memories."
        return "\n".join(f"[{h.score:.2f}] {h.cube.content}" for h in hits)

    @tool
    def save_memory(fact: str, config: RunnableConfig) -> str:
        """Save one fact about the current user to long-term memory."""
        cubes = mem.add(
            [{"role": "assistant" if agent_id else "user", "content": fact}],
            user_id=require_user(config, user_id),
            agent_id=agent_id,
            vault=vault,
            session_id=resolve(config, "session_id"),
        )
        return f"Saved memory {cubes[0].id}."

    return [search_memory, save_memory]
