"""Asking a LangChain chat model for a pydantic object: the one structured-output helper."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import ExtractionError

T = TypeVar("T", bound=BaseModel)


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or LangChain content blocks."""
    if isinstance(content, str):
        return content
    return text_of_blocks(content)


def text_of_blocks(blocks: Iterable[Any]) -> str:
    parts = []
    for b in blocks:
        if isinstance(b, str):
            parts.append(b)
        elif isinstance(b, dict) and b.get("type") == "text":
            parts.append(str(b.get("text", "")))
    return "\n".join(parts)


def first_json(text: str, starts: str = "{[") -> Any:
    """The first JSON value in a model reply that opens with one of `starts` (fences allowed)."""
    start = min((i for i in (text.find(c) for c in starts) if i >= 0), default=-1)
    if start < 0:
        raise ExtractionError(f"no JSON in chat model reply: {text[:200]!r}")
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        raise ExtractionError(f"chat model reply is not valid JSON: {exc}") from exc
    return data


def validate(schema: type[T], data: Any, shape: Callable[[Any], Any] | None = None) -> T:
    """`data` as `schema` (after `shape`, e.g. wrapping a bare list), else ExtractionError."""
    try:
        return schema.model_validate(shape(data) if shape else data)
    except ValidationError as exc:
        raise ExtractionError(f"chat model output does not fit {schema.__name__}: {exc}") from exc


def ask_structured(
    llm: Any,
    prompt: Any,
    schema: type[T],
    *,
    shape: Callable[[Any], Any] | None = None,
    starts: str = "{",
    bounded: type[T] | None = None,
) -> T:
    """`schema` from `llm`: its structured output where it has one (asked for with `bounded`, a
    subclass of `schema` with tighter bounds, when given), else the first JSON value of its
    reply (opening with a character of `starts`). `shape` adapts parsed data before
    validation. Any failure is an ExtractionError."""
    try:
        structured = llm.with_structured_output(bounded or schema)
    except (NotImplementedError, AttributeError):
        structured = None
    try:
        out = structured.invoke(prompt) if structured is not None else llm.invoke(prompt)
    except Exception as exc:
        raise ExtractionError(f"chat model failed: {exc}") from exc
    if isinstance(out, schema):
        return out
    if isinstance(out, dict | list):
        return validate(schema, out, shape)
    text = text_of(out.content if hasattr(out, "content") else str(out))
    return validate(schema, first_json(text, starts), shape)
