"""`MemOSMiddleware` for `langchain.agents.create_agent`: recall before each model call,
remember the turn when the agent finishes.

With `activation=True` and a model served by MemOS's model process (`mem.chat_model()`, or
`ChatOpenAI(base_url=<model url>/v1, api_key=<token>)`), the memories come as
`mem.chat_request` plans them for the last user message: the memory block (the scheduler's hot
KV cache's memories first, then the other hits not already in the conversation) opens the
system message, ahead of the agent's own system prompt, and the request names the adapter
(`model`) and the KV cache (`extra_body`). Every turn's prompt then starts with the cached
block, and with the previous turn's prompt while the block stays the same, so the model process
prefills only what is new; the reply's `response_metadata["memos"]` says which cubes it used
and how many prompt tokens were cached.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langgraph.config import get_config
from memos_agents.mos import MemOS

from .nodes import format_memories, last_message, message_text, remember_node, require_user

if TYPE_CHECKING:
    from memos_agents.model.client import ChatRequest


class MemOSMiddleware(AgentMiddleware):
    """Injects the user's most relevant memories into the system message before the model
    runs, and writes the finished turn to MemOS after the agent ends."""

    def __init__(
        self,
        mem: MemOS,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        vault: str | None = None,
        k: int = 5,
        remember: bool = True,
        activation: bool = False,
    ) -> None:
        super().__init__()
        self.mem = mem
        self.user_id = user_id
        self.vault = vault
        self.k = k
        self._remember = remember_node(mem, user_id=user_id, agent_id=agent_id, vault=vault)
        self.remember = remember
        self.activation = activation

    def _system(self, request: ModelRequest, block: str, first: bool) -> SystemMessage:
        """The memory `block` joined to the agent's system prompt (before it when `first`)."""
        base = request.system_message.content if request.system_message else ""
        if not base:
            return SystemMessage(content=block)
        return SystemMessage(content=f"{block}\n\n{base}" if first else f"{base}\n\n{block}")

    def _with_memories(self, request: ModelRequest) -> tuple[ModelRequest, ChatRequest | None]:
        """The request with the memories in its system message, and what `chat_request`
        chose for it (None without `activation`)."""
        human = last_message(request.messages, HumanMessage)
        if human is None or not message_text(human).strip():
            return request, None
        user = require_user(get_config(), self.user_id)
        query = message_text(human)
        if self.activation:
            seen = [message_text(m) for m in request.messages]
            chosen = self.mem.chat_request(query, user_id=user, vault=self.vault, skip_texts=seen)
            settings = {**request.model_settings, **chosen.options}
            system = self._system(request, chosen.prefix, first=True)
            return request.override(system_message=system, model_settings=settings), chosen
        hits = self.mem.search(query, user_id=user, k=self.k, vault=self.vault)
        block = format_memories([{"content": h.cube.content} for h in hits])
        return request.override(system_message=self._system(request, block, first=False)), None

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        request, chosen = self._with_memories(request)
        return _reported(handler(request), chosen)

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        import asyncio

        request, chosen = await asyncio.to_thread(self._with_memories, request)
        return _reported(await handler(request), chosen)

    def after_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        if self.remember:
            self._remember(dict(state), get_config())
        return None


def _reported(response: Any, chosen: ChatRequest | None) -> Any:
    """`response` with what `chosen` used in its replies' `response_metadata["memos"]`."""
    if chosen is None:
        return response
    replies = response.result if isinstance(response, ModelResponse) else [response]
    for msg in replies:
        if isinstance(msg, AIMessage):
            usage = msg.usage_metadata or {}
            cached = usage.get("input_token_details", {}).get("cache_read", 0)
            memos = msg.response_metadata.get("memos") or {}
            msg.response_metadata["memos"] = {**memos, **chosen.report(), "cached_tokens": cached}
    return response
