"""A LangChain chat model backed by a model process (ours, or any OpenAI-compatible server).

    llm = mem.chat_model()                         # starts / finds the local model process
    MemOS.open(path, llm=llm)                      # fine-mode extraction
    build_memory_agent(mem, model=llm)             # the ready-made graphs

`extra_body` is merged into every request (for example `{"memos_activation": {...}}`), and so
is an `extra_body` call option (`llm.bind(extra_body=...)`). The transport is the openai SDK
(sync and async clients on `base_url` + `/v1`); whatever is not a standard chat-completion
parameter travels in the SDK's `extra_body`.

With `recall` (`mem.chat_model(user_id=...)` sets it to that user's `mem.chat_request`), each
request's messages are first given to it: the request then carries the memories it chose (the
memory block, the adapter, the activation's KV cache), and `response_metadata["memos"]` says
which (`activation`, `parameter`, `adapter`, `plaintext`, `used`, `cached_tokens`).

`with_structured_output(schema)` sends the schema as OpenAI's `response_format` (json_schema):
our model process decodes under it, so the reply always parses; vLLM does the same.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from operator import itemgetter
from typing import Any

import openai
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
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from pydantic import BaseModel, Field, PrivateAttr, SecretStr

from ..errors import ExtractionError
from ..llm import validate
from .client import API_KEY, ChatRequest, model_error, usage_dict

# what `chat.completions.create` takes by name; anything else goes in its `extra_body`
_SDK_PARAMS = (
    "model",
    "messages",
    "temperature",
    "max_tokens",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "response_format",
)


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


def _extra(obj: Any) -> dict[str, Any]:
    """Fields an SDK object carries beyond the OpenAI schema (ours: `memos`, `parent`)."""
    return obj.model_extra or {}


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


def _memos(
    server: dict[str, Any] | None, chosen: ChatRequest | None, usage: UsageMetadata | None
) -> dict[str, Any]:
    """A reply's `response_metadata["memos"]`: what the server reported (timings), and the
    memories `recall` chose with the prompt tokens the KV cache held."""
    out = dict(server or {})
    if chosen is not None:
        cached = (usage or {}).get("input_token_details", {}).get("cache_read", 0)
        out |= chosen.report() | {"cached_tokens": cached}
    return out


def response_format(schema: dict[str, Any] | type[BaseModel]) -> dict[str, Any]:
    """OpenAI's `response_format` for `schema` (a pydantic model or a JSON schema dict)."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        name, body = schema.__name__, schema.model_json_schema()
    elif isinstance(schema, dict):
        name, body = str(schema.get("title") or "output"), schema
    else:
        raise TypeError(f"schema must be a pydantic model or a JSON schema dict, not {schema!r}")
    return {"type": "json_schema", "json_schema": {"name": name, "schema": body}}


def parse_structured(schema: dict[str, Any] | type[BaseModel], message: BaseMessage) -> Any:
    """A schema-constrained reply as `schema` (a pydantic object, or a dict for a JSON schema);
    ExtractionError for a reply cut at max_tokens or one that does not parse."""
    text = _text(message.content)
    if message.response_metadata.get("finish_reason") == "length":
        raise ExtractionError(
            "the structured reply reached max_tokens before its JSON was complete (raise "
            f"max_tokens): {text[-120:]!r}"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExtractionError(f"the structured reply is not JSON: {exc}: {text[:120]!r}") from exc
    if isinstance(schema, type):
        return validate(schema, data)
    return data


class MemOSChatModel(BaseChatModel):
    """Chat completions from `base_url` (`http://127.0.0.1:PORT`, with or without `/v1`);
    `api_key` is sent as `Authorization: Bearer` (the token of our model process, which
    `mem.chat_model()` fills in, or a vLLM key; never shown in a repr)."""

    base_url: str
    api_key: SecretStr | None = Field(default=None, repr=False)
    model: str | None = None
    temperature: float = 0.0
    max_tokens: int = 512
    stop: list[str] | None = None
    seed: int | None = None
    timeout: float = 600.0
    extra_body: dict[str, Any] = Field(default_factory=dict)
    recall: Callable[[list[dict[str, str]]], ChatRequest] | None = Field(
        default=None, exclude=True, repr=False
    )
    _sync: openai.OpenAI | None = PrivateAttr(default=None)

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

    def _sdk_options(self) -> dict[str, Any]:
        return {
            "base_url": f"{self._root}/v1",
            "api_key": self.api_key.get_secret_value() if self.api_key else API_KEY,
            "timeout": self.timeout,
            "max_retries": 0,
        }

    def _client(self) -> openai.OpenAI:
        if self._sync is None or str(self._sync.base_url).rstrip("/") != f"{self._root}/v1":
            self._sync = openai.OpenAI(**self._sdk_options())
        return self._sync

    def _model_name(self) -> str:
        if self.model:
            return self.model
        try:
            data = self._client().models.list().data
        except openai.OpenAIError as exc:
            raise model_error(exc, self._root) from exc
        self.model = next((m.id for m in data if not _extra(m).get("parent")), data[0].id)
        return self.model

    def _body(
        self, messages: list[BaseMessage], stop: list[str] | None, stream: bool, **kwargs: Any
    ) -> tuple[dict[str, Any], ChatRequest | None]:
        """The JSON of the request, and what `recall` chose for it (None without `recall`)."""
        sent = [to_openai(m) for m in messages]
        chosen = self.recall(sent) if self.recall is not None else None
        extra = {**self.extra_body, **(chosen.extra_body if chosen else {})}
        body: dict[str, Any] = {
            "model": kwargs.pop("model", None)
            or (chosen.model if chosen else None)
            or self._model_name(),
            "messages": chosen.messages if chosen else sent,
            "temperature": kwargs.pop("temperature", self.temperature),
            "max_tokens": kwargs.pop("max_tokens", self.max_tokens),
            "stream": stream,
            **extra,
            **(kwargs.pop("extra_body", None) or {}),
            **kwargs,
        }
        stops = stop or self.stop
        if stops:
            body["stop"] = stops
        if self.seed is not None:
            body.setdefault("seed", self.seed)
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body, chosen

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, stream: bool, **kwargs: Any
    ) -> tuple[dict[str, Any], ChatRequest | None]:
        """`chat.completions.create` arguments: the standard parameters by name, the rest
        (`extra_body`, other call options) in the SDK's `extra_body`; the JSON sent is `_body`.
        Also what `recall` chose."""
        body, chosen = self._body(messages, stop, stream, **kwargs)
        named = {k: body.pop(k) for k in _SDK_PARAMS if k in body}
        return {**named, "extra_body": body}, chosen

    async def _arequest(
        self, messages: list[BaseMessage], stop: list[str] | None, stream: bool, **kwargs: Any
    ) -> tuple[dict[str, Any], ChatRequest | None]:
        """`_request` off the event loop when `recall` runs (it reads the store)."""
        if self.recall is None:
            return self._request(messages, stop, stream, **kwargs)
        return await asyncio.to_thread(self._request, messages, stop, stream, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable[Any, Any]:
        """Replies decoded under `schema` (a pydantic model or a JSON schema dict) and parsed
        into it: a pydantic object, or a dict. `include_raw` returns {"raw", "parsed",
        "parsing_error"} instead. A reply cut at max_tokens is an ExtractionError."""
        kwargs.pop("method", None)  # one method: json_schema
        kwargs.pop("strict", None)  # decoding always follows the schema
        if kwargs:
            raise ValueError(f"unsupported arguments: {sorted(kwargs)}")
        llm = self.bind(response_format=response_format(schema))
        parser = RunnableLambda(lambda msg: parse_structured(schema, msg), name="parse_structured")
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks(
            [failed], exception_key="parsing_error"
        )

    @staticmethod
    def _result(data: Any, chosen: ChatRequest | None) -> ChatResult:
        choice = data.choices[0]
        usage = _usage(usage_dict(data.usage))
        memos = _memos(_extra(data).get("memos"), chosen, usage)
        msg = AIMessage(
            content=choice.message.content or "",
            response_metadata={
                "finish_reason": choice.finish_reason,
                "model_name": data.model,
                **({"memos": memos} if memos else {}),
            },
            usage_metadata=usage,
        )
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request, chosen = self._request(messages, stop, False, **kwargs)
        try:
            return self._result(self._client().chat.completions.create(**request), chosen)
        except openai.OpenAIError as exc:
            raise model_error(exc, self._root) from exc

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request, chosen = await self._arequest(messages, stop, False, **kwargs)
        try:
            async with openai.AsyncOpenAI(**self._sdk_options()) as client:
                return self._result(await client.chat.completions.create(**request), chosen)
        except openai.OpenAIError as exc:
            raise model_error(exc, self._root) from exc

    @staticmethod
    def _chunks(
        event: Any, started: float, chosen: ChatRequest | None
    ) -> Iterator[ChatGenerationChunk]:
        if event.usage is not None:
            usage = _usage(usage_dict(event.usage))
            memos = _memos(None, chosen, usage)
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    usage_metadata=usage,
                    response_metadata={"memos": memos} if memos else {},
                )
            )
        for choice in event.choices:
            piece = (choice.delta.content if choice.delta is not None else None) or ""
            meta: dict[str, Any] = {}
            if choice.finish_reason:
                meta["finish_reason"] = choice.finish_reason
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
        request, chosen = self._request(messages, stop, True, **kwargs)
        started = time.perf_counter()
        try:
            with self._client().chat.completions.create(**request) as events:
                for event in events:
                    for chunk in self._chunks(event, started, chosen):
                        if run_manager is not None and chunk.text:
                            run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                        yield chunk
        except openai.OpenAIError as exc:
            raise model_error(exc, self._root) from exc

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request, chosen = await self._arequest(messages, stop, True, **kwargs)
        started = time.perf_counter()
        try:
            async with (
                openai.AsyncOpenAI(**self._sdk_options()) as client,
                await client.chat.completions.create(**request) as events,
            ):
                async for event in events:
                    for chunk in self._chunks(event, started, chosen):
                        if run_manager is not None and chunk.text:
                            await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                        yield chunk
        except openai.OpenAIError as exc:
            raise model_error(exc, self._root) from exc
