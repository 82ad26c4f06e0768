"""`memory_agent`: a chat agent that recalls before answering and remembers after.

    recall -> respond -> remember

Invoke with `config={"configurable": {"user_id": "alice", "thread_id": "t1"}}`; memory is
per user and persists across threads and runs (it lives in MemOS, not in the checkpointer).
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.graph import END, START, MessagesState, StateGraph
from memos_agents.graphs.common import (
    agent_step,
    built_once,
    default_chat_model,
    server_memos,
    serves_locally,
)
from memos_agents.langgraph.nodes import recall_node, remember_node

from memos_agents.mos import MemOS

SYSTEM_PROMPT = (
    "You are a helpful assistant with long-term memory. Use what you remember about the user "
    "when it helps, and do not invent memories."
)


class MemoryAgentState(MessagesState):
    memories: list[dict[str, Any]]


def build_memory_agent(
    mem: MemOS,
    model: BaseChatModel,
    *,
    k: int = 5,
    vault: str | None = None,
    system_prompt: str | None = None,
    checkpointer: Any = None,
    mode: str = "fast",
    activation: bool = True,
) -> Any:
    """Compile the memory agent over `mem` with any LangChain chat model.

    With `mem`'s own model process (`mem.chat_model()`) the answer is generated through
    `mem.generate`: the memories the scheduler promoted to its hot activation (KV) cache are
    served from it, so turn after turn over the same memories the model skips re-reading them
    (`activation=False`: the recalled memories as text). `system_prompt` None is SYSTEM_PROMPT
    for any other chat model and the model process's memory prompt (the one the scheduler's
    caches are built with) for the local one."""
    if system_prompt is None and not serves_locally(mem, model):
        system_prompt = SYSTEM_PROMPT
    respond = agent_step(model, system_prompt, mem=mem, vault=vault, activation=activation)
    builder = StateGraph(MemoryAgentState)
    builder.add_sequence(
        [
            ("recall", recall_node(mem, k=k, vault=vault)),
            ("respond", respond),
            ("remember", remember_node(mem, vault=vault, mode=mode)),
        ]
    )
    builder.add_edge(START, "recall")
    builder.add_edge("remember", END)
    return builder.compile(checkpointer=checkpointer, name="memory_agent")


@built_once
def served_graph() -> Any:
    """The graph the server runs, built once per process: over `server_memos()`, with the chat
    model of `MEMOS_CHAT_MODEL` or else the local model process."""
    mem = server_memos()
    return build_memory_agent(mem, default_chat_model(mem))


async def make_graph() -> Any:
    """Entry point for `langgraph.json`; the server calls it for every request, so the (blocking)
    first build runs in a worker thread, off the event loop."""
    return await asyncio.to_thread(served_graph)
