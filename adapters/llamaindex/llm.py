"""`MemOSLLM`: a llama-index LLM over a LangChain chat model, made for MemOS's model process.

    llm = MemOSLLM(llm=mem.chat_model(max_tokens=256))
    memory = MemOSMemory.from_defaults(mem=mem, user_id="alice", activation=True)
    engine = SimpleChatEngine.from_defaults(llm=llm, memory=memory)

A system message that carries `additional_kwargs["memos_options"]` (the memory block
`MemOSMemory(activation=True)` returns) is sent first, with any other system text after it, and
its options (`model`: the adapter, `extra_body`: the activation's KV cache) go with the request,
so the model process reuses the cached block, and the previous turn's prompt, turn after turn.
The reply's `additional_kwargs["memos"]` says which cubes were used (`additional_kwargs
["memos_used"]` of that message), and how many prompt tokens it had (`prompt_tokens`) and the
KV cache held (`cached_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback

from .memory import OPTIONS, USED, message_text

_ROLES: dict[MessageRole, type[BaseMessage]] = {
    MessageRole.SYSTEM: SystemMessage,
    MessageRole.ASSISTANT: AIMessage,
    MessageRole.CHATBOT: AIMessage,
    MessageRole.MODEL: AIMessage,
}


def outgoing(
    messages: Sequence[ChatMessage],
) -> tuple[list[BaseMessage], dict[str, Any], dict[str, Any] | None]:
    """The LangChain messages to send (one system message, the memory block leading it), the
    call options of the memory block, and what it uses (None without a memory block)."""
    block = next((m for m in messages if OPTIONS in m.additional_kwargs), None)
    systems = [message_text(m) for m in messages if m.role == MessageRole.SYSTEM and m is not block]
    head = [message_text(block)] if block is not None else []
    turns = [
        _ROLES.get(m.role, HumanMessage)(content=message_text(m))
        for m in messages
        if m.role != MessageRole.SYSTEM
    ]
    system = [SystemMessage(content="\n\n".join(head + systems))] if head or systems else []
    if block is None:
        return [*system, *turns], {}, None
    extra = block.additional_kwargs
    return [*system, *turns], dict(extra[OPTIONS]), extra.get(USED)


def _report(used: dict[str, Any] | None, reply: BaseMessage) -> dict[str, Any]:
    usage = getattr(reply, "usage_metadata", None) or {}
    if used is None:
        return {}
    cached = usage.get("input_token_details", {}).get("cache_read", 0)
    return {**used, "prompt_tokens": usage.get("input_tokens", 0), "cached_tokens": cached}


class MemOSLLM(CustomLLM):
    """Chat through `llm` (a LangChain chat model: `mem.chat_model()`, or `ChatOpenAI` on the
    model process), with a memory block's request options."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: BaseChatModel = Field(exclude=True, description="The LangChain chat model used.")
    context_window: int = Field(default=8192, description="The model's context, in tokens.")

    @classmethod
    def class_name(cls) -> str:
        return "MemOSLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=int(getattr(self.llm, "max_tokens", None) or 256),
            is_chat_model=True,
            model_name=str(getattr(self.llm, "model", None) or type(self.llm).__name__),
        )

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        sent, options, used = outgoing(messages)
        reply = self.llm.bind(**options, **kwargs).invoke(sent)
        memos = _report(used, reply)
        return ChatResponse(
            message=ChatMessage(
                role=MessageRole.ASSISTANT,
                content=message_text_of(reply),
                additional_kwargs={"memos": memos} if memos else {},
            ),
            raw={"response_metadata": reply.response_metadata,
                 "usage_metadata": getattr(reply, "usage_metadata", None)},
        )

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        sent, options, used = outgoing(messages)

        def gen() -> ChatResponseGen:
            text = ""
            for chunk in self.llm.bind(**options, **kwargs).stream(sent):
                piece = message_text_of(chunk)
                text += piece
                memos = _report(used, chunk) if chunk.usage_metadata else {}
                yield ChatResponse(
                    message=ChatMessage(
                        role=MessageRole.ASSISTANT,
                        content=text,
                        additional_kwargs={"memos": memos} if memos else {},
                    ),
                    delta=piece,
                )

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        reply = self.chat([ChatMessage(role=MessageRole.USER, content=prompt)], **kwargs)
        return CompletionResponse(text=reply.message.content or "", raw=reply.raw)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        def gen() -> CompletionResponseGen:
            for r in self.stream_chat([ChatMessage(role=MessageRole.USER, content=prompt)],
                                      **kwargs):
                yield CompletionResponse(text=r.message.content or "", delta=r.delta)

        return gen()


def message_text_of(message: BaseMessage) -> str:
    """The text of a LangChain reply."""
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(b if isinstance(b, str) else str(b.get("text", "")) for b in content)
