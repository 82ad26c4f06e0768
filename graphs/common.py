"""Pieces the ready-made graphs share: the server's MemOS, the chat model default and one
agent step. The graphs import it as `memos_agents.graphs.common` (never relatively), so the
LangGraph server, which loads each graph file by path, shares one module and one MemOS."""

from __future__ import annotations

import atexit
import functools
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from memos_agents.langgraph.nodes import format_memories

from memos_agents.mos import MemOS

T = TypeVar("T")


def built_once(build: Callable[[], T]) -> Callable[[], T]:
    """`build` run on the first call only, under a lock, so threads racing on the first call
    share one result; later calls return it."""
    lock = threading.Lock()
    built: list[T] = []

    @functools.wraps(build)
    def once() -> T:
        with lock:
            if not built:
                built.append(build())
            return built[0]

    return once


@built_once
def server_memos() -> MemOS:
    """The one MemOS of this process for the graphs and the store that `langgraph.json` names:
    the data dir of `MEMOS_DATA_DIR` (default ./.memos), closed when the process exits."""
    mem = MemOS.open()
    atexit.register(mem.close)
    return mem


def default_chat_model(mem: MemOS) -> BaseChatModel:
    """The chat model named by `MEMOS_CHAT_MODEL` (any `init_chat_model` id, e.g.
    "openai:gpt-4o-mini"), else the local model process (`mem.chat_model()`)."""
    name = os.environ.get("MEMOS_CHAT_MODEL")
    if not name:
        return mem.chat_model()
    from langchain.chat_models import init_chat_model

    return init_chat_model(name)


def agent_step(
    model: BaseChatModel,
    system_prompt: str,
    *,
    name: str | None = None,
    context_keys: Sequence[str] = ("memories",),
) -> Callable[[dict[str, Any], RunnableConfig], dict[str, Any]]:
    """A node that answers the conversation with `model`, the recalled memories (and any other
    `context_keys` lists of {"content": ...}) in its system message."""

    def step(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        blocks = [system_prompt]
        for key in context_keys:
            items = state.get(key) or []
            if key == "memories":
                blocks.append(format_memories(items))
            elif items:
                blocks.append(f"{key}:\n" + "\n".join(f"- {i['content']}" for i in items))
        prompt = [SystemMessage(content="\n\n".join(blocks)), *state["messages"]]
        reply = model.invoke(prompt, config)
        if not isinstance(reply, AIMessage):
            reply = AIMessage(content=str(getattr(reply, "content", reply)))
        if name:
            reply.name = name
        return {"messages": [reply]}

    return step
