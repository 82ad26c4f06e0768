"""A LangChain chat model backed by a model process (ours, or any OpenAI-compatible server).

    llm = mem.chat_model()                         # starts / finds the local model process
    MemOS.open(path, llm=llm)                      # fine-mode extraction
    build_memory_agent(mem, model=llm)             # the ready-made graphs

`extra_body` is merged into every request (for example `{"memos_activation": {...}}`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

from .client import ModelError, ModelUnavailable


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


def to_openai(message: BaseMessage) -> dict[str, str]:
    if isinstance(message, SystemMessage):
        role = "system"
    elif isinstance(message, HumanMessage):
        role = "user"
    elif isinstance(message, AIMessage):
        role = "assistant"
    elif isinstance(message, ToolMessage):
        return {"role": "user", "content": f"Tool result: {_text(message.content)}"}
    elif isinstance(message, ChatMessage):
        role = message.role
    else:
        role = "user"
    return {"role": role, "content": _text(message.content)}


def _usage(usage: dict[str, Any] | None) -> UsageMetadata | None:
    if not usage:
        return None
    return UsageMetadata(
        input_tokens=int(usage.get("prompt_tokens", 0)),
        output_tokens=int(usage.get("completion_tokens", 0)),
        total_tokens=int(usage.get("total_tokens", 0)),
        input_token_details={
            "cache_read": int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))
        },
    )


class MemOSChatModel(BaseChatModel):
    """Chat completions from `base_url` (`http://127.0.0.1:PORT`, with or without `/v1`)."""

    base_url: str
    model: str | None = None
    temperature: float = 0.0
    max_tokens: int = 512
    stop: list[str] | None = None
    seed: int | None = None
    timeout: float = 600.0
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @property
    def _llm_type(self) -> str:
        return "memos-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "temperature": self.temperature}

    @property
    def _root(self) -> str:
        url = self.base_url.rstrip("/")
        return url[:-3] if url.endswith("/v1") else url

    def _model_name(self) -> str:
        if self.model:
            return self.model
        resp = httpx.get(f"{self._root}/v1/models", timeout=10.0)
        resp.raise_for_status()
        data = resp.json()["data"]
        self.model = next((m["id"] for m in data if not m.get("parent")), data[0]["id"])
        return self.model

    def _body(
        self, messages: list[BaseMessage], stop: list[str] | None, stream: bool, **kwargs: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": kwargs.pop("model", None) or self._model_name(),
            "messages": [to_openai(m) for m in messages],
            "temperature": kwargs.pop("temperature", self.temperature),
            "max_tokens": kwargs.pop("max_tokens", self.max_tokens),
            "stream": stream,
            **self.extra_body,
            **kwargs,
        }
        stops = stop or self.stop
        if stops:
            body["stop"] = stops
        if self.seed is not None:
            body.setdefault("seed", self.seed)
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    @staticmethod
    def _check(resp: httpx.Response) -> None:
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text
            raise ModelError(f"model process: {message}", status=resp.status_code)

    @staticmethod
    def _result(data: dict[str, Any]) -> ChatResult:
        choice = data["choices"][0]
        msg = AIMessage(
            content=choice["message"].get("content") or "",
            response_metadata={
                "finish_reason": choice.get("finish_reason"),
                "model_name": data.get("model"),
                **({"memos": data["memos"]} if data.get("memos") else {}),
            },
            usage_metadata=_usage(data.get("usage")),
        )
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        body = self._body(messages, stop, False, **kwargs)
        try:
            resp = httpx.post(f"{self._root}/v1/chat/completions", json=body, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"no model process answers at {self._root}: {exc}") from exc
        self._check(resp)
        return self._result(resp.json())

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        body = self._body(messages, stop, False, **kwargs)
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                resp = await http.post(f"{self._root}/v1/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"no model process answers at {self._root}: {exc}") from exc
        self._check(resp)
        return self._result(resp.json())

    @staticmethod
    def _chunks(data: str, started: float) -> Iterator[ChatGenerationChunk]:
        event = json.loads(data)
        if "error" in event:
            raise ModelError(f"model process: {event['error'].get('message')}")
        if event.get("usage"):
            yield ChatGenerationChunk(
                message=AIMessageChunk(content="", usage_metadata=_usage(event["usage"]))
            )
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") or ""
            meta: dict[str, Any] = {}
            if choice.get("finish_reason"):
                meta["finish_reason"] = choice["finish_reason"]
                meta["elapsed_s"] = round(time.perf_counter() - started, 4)
            if piece or meta:
                yield ChatGenerationChunk(
                    message=AIMessageChunk(content=piece, response_metadata=meta)
                )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        body = self._body(messages, stop, True, **kwargs)
        started = time.perf_counter()
        try:
            with httpx.stream(
                "POST", f"{self._root}/v1/chat/completions", json=body, timeout=self.timeout
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._check(resp)
                for line in resp.iter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    for chunk in self._chunks(line[5:].strip(), started):
                        if run_manager is not None and chunk.text:
                            run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                        yield chunk
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"no model process answers at {self._root}: {exc}") from exc

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        body = self._body(messages, stop, True, **kwargs)
        started = time.perf_counter()
        try:
            async with (
                httpx.AsyncClient(timeout=self.timeout) as http,
                http.stream("POST", f"{self._root}/v1/chat/completions", json=body) as resp,
            ):
                if resp.status_code >= 400:
                    await resp.aread()
                    self._check(resp)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    for chunk in self._chunks(line[5:].strip(), started):
                        if run_manager is not None and chunk.text:
                            await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                        yield chunk
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"no model process answers at {self._root}: {exc}") from exc
