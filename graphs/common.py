"""Pieces the ready-made graphs share: the chat model default and one agent step."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from memos_agents.langgraph.nodes import format_memories

from memos_agents.mos import MemOS


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
