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
from langchain_core.messages.ai import UsageMetadata
from langchain_core.runnables import RunnableConfig
from memos_agents.langgraph.nodes import format_memories, require_user

from memos_agents.model.protocol import DEFAULT_SYSTEM_PROMPT
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


def serves_locally(mem: MemOS, model: BaseChatModel) -> bool:
    """Whether `model` is `mem`'s own model process (a `MemOSChatModel` on its URL), so a
    step can generate through `mem.generate` and use activation memory."""
    from memos_agents.model.chat import MemOSChatModel

    if not isinstance(model, MemOSChatModel):
        return False
    from memos_agents.model.client import ModelUnavailable

    try:
        url = mem.model(start=False).url
    except ModelUnavailable:
        return False
    return model.base_url.rstrip("/").removesuffix("/v1") == url.rstrip("/")


def _local_reply(
    mem: MemOS,
    model: Any,
    state: dict[str, Any],
    config: RunnableConfig,
    opts: tuple[str | None, str | None, bool],
) -> AIMessage:
    """The reply of `mem.generate`: with the scheduler's plan (its hot KV cache holds the
    recalled memories, the other hits follow as text), or with `activation` off the recalled
    memories as text (`plan=False`); `response_metadata["memos"]` says what it used."""
    system_prompt, vault, activation = opts
    user = require_user(config)
    kw: dict[str, Any] = {}
    if not activation:
        kw = {"plan": False, "memories": [m["id"] for m in state.get("memories") or []]}
    out = mem.generate(
        list(state["messages"]),
        user_id=user,
        vault=vault,
        system_prompt=system_prompt,
        max_tokens=model.max_tokens,
        temperature=model.temperature,
        stop=model.stop,
        seed=model.seed,
        **kw,
    )
    used = {
        "activation": out.activation,
        "plaintext": out.plaintext,
        "adapter": out.adapter,
        "cached_tokens": out.cached_tokens,
        "ttft_s": out.ttft_s,
        "planned": out.planned,
    }
    return AIMessage(
        content=out.text,
        response_metadata={"finish_reason": out.finish_reason, "memos": used},
        usage_metadata=UsageMetadata(
            input_tokens=int(out.usage.get("prompt_tokens", 0)),
            output_tokens=int(out.usage.get("completion_tokens", 0)),
            total_tokens=int(out.usage.get("total_tokens", 0)),
            input_token_details={"cache_read": out.cached_tokens},
        ),
    )


def agent_step(
    model: BaseChatModel,
    system_prompt: str | None,
    *,
    name: str | None = None,
    context_keys: Sequence[str] = ("memories",),
    mem: MemOS | None = None,
    vault: str | None = None,
    activation: bool = True,
) -> Callable[[dict[str, Any], RunnableConfig], dict[str, Any]]:
    """A node that answers the conversation with `model`, the recalled memories (and any other
    `context_keys` lists of {"content": ...}) in its system message.

    With `mem`, when `model` is `mem`'s own model process (`mem.chat_model()`) and no other
    context is in the state, the step generates through `mem.generate`: the scheduler's plan
    serves the memories from its hot activation (KV) cache, so a conversation over the same
    memories skips re-reading them turn after turn (`activation=False`: the recalled memories
    as text, the same prompt). `system_prompt` None there is the model process's memory prompt,
    the one the scheduler's caches are built with (a cache built with another is not used).
    Any other chat model gets the memories as text."""
    local: list[bool] = []

    def step(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        if mem is not None and not local:
            local.append(serves_locally(mem, model))
        others = any(state.get(k) for k in context_keys if k != "memories")
        if mem is not None and local[0] and not others:
            reply = _local_reply(mem, model, state, config, (system_prompt, vault, activation))
        else:
            reply = _text_reply(model, system_prompt, context_keys, state, config)
        if name:
            reply.name = name
        return {"messages": [reply]}

    return step


def _text_reply(
    model: BaseChatModel,
    system_prompt: str | None,
    context_keys: Sequence[str],
    state: dict[str, Any],
    config: RunnableConfig,
) -> AIMessage:
    blocks = [system_prompt if system_prompt is not None else DEFAULT_SYSTEM_PROMPT]
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
    return reply
