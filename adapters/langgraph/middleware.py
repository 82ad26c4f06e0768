"""`MemOSMiddleware` for `langchain.agents.create_agent`: recall before each model call,
remember the turn when the agent finishes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import HumanMessage, SystemMessage

from langgraph.config import get_config
from memos_agents.mos import MemOS

from .nodes import format_memories, last_message, message_text, remember_node, require_user


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
    ) -> None:
        super().__init__()
        self.mem = mem
        self.user_id = user_id
        self.vault = vault
        self.k = k
        self._remember = remember_node(mem, user_id=user_id, agent_id=agent_id, vault=vault)
        self.remember = remember

    def _with_memories(self, request: ModelRequest) -> ModelRequest:
        human = last_message(request.messages, HumanMessage)
        if human is None or not message_text(human).strip():
            return request
        user = require_user(get_config(), self.user_id)
        hits = self.mem.search(message_text(human), user_id=user, k=self.k, vault=self.vault)
        block = format_memories([{"content": h.cube.content} for h in hits])
        base = request.system_message.content if request.system_message else ""
        text = f"{base}\n\n{block}" if base else block
        return request.override(system_message=SystemMessage(content=text))

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        return handler(self._with_memories(request))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        import asyncio

        return await handler(await asyncio.to_thread(self._with_memories, request))

    def after_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        if self.remember:
            self._remember(dict(state), get_config())
        return None
