"""Conversation files MemOS can ingest: JSONL of messages, and the LoCoMo benchmark format."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from .errors import InvalidInput

Format = Literal["auto", "jsonl", "locomo"]

_LOCOMO_DATE = "%I:%M %p on %d %B, %Y"
_SESSION_KEY = re.compile(r"^session_(\d+)$")


class Batch(BaseModel):
    """Messages that share one scope (a conversation session)."""

    user_id: str | None = None
    session_id: str | None = None
    messages: list[dict[str, Any]] = Field(default_factory=list)


def detect_format(path: Path) -> Literal["jsonl", "locomo"]:
    with path.open(encoding="utf-8") as fh:
        head = fh.read(4096).lstrip()
    if path.suffix == ".jsonl" or head.startswith("{"):
        return "jsonl"
    if head.startswith("["):
        return "locomo"
    raise InvalidInput(f"{path}: cannot tell the format (expected JSONL or LoCoMo JSON)")


def read_batches(path: Path, fmt: Format = "auto") -> Iterator[Batch]:
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}")
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "jsonl":
        yield from _read_jsonl(path)
    elif kind == "locomo":
        yield from read_locomo(path)
    else:
        raise InvalidInput(f"unknown format {fmt!r}: use jsonl or locomo")


def _read_jsonl(path: Path) -> Iterator[Batch]:
    """One message per line: {"role", "content", ["user_id", "session_id", "timestamp", "id"]}.
    Consecutive lines with the same user and session form one batch."""
    current: Batch | None = None
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{path}:{n}: not JSON: {exc}") from exc
            if not isinstance(msg, dict):
                raise InvalidInput(f"{path}:{n}: each line must be a JSON object")
            user, session = msg.pop("user_id", None), msg.pop("session_id", None)
            msg.setdefault("id", f"{path.name}:{n}")
            if current is None or (current.user_id, current.session_id) != (user, session):
                if current is not None:
                    yield current
                current = Batch(user_id=user, session_id=session)
            current.messages.append(msg)
    if current is not None:
        yield current


def parse_locomo_date(text: str) -> datetime:
    return datetime.strptime(text.strip(), _LOCOMO_DATE).replace(tzinfo=UTC)


def locomo_turn_text(turn: dict[str, Any]) -> str:
    text = turn.get("text", "")
    if turn.get("blip_caption"):
        text = f"{text} [shares an image: {turn['blip_caption']}]"
    return text


def read_locomo(path: Path) -> Iterator[Batch]:
    """Each LoCoMo conversation's sessions; user = sample_id, provenance = the turn's dia_id."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: not JSON: {exc}") from exc
    if not isinstance(data, list):
        raise InvalidInput(f"{path}: LoCoMo data is a list of conversations")
    for sample in data:
        conv = sample.get("conversation") if isinstance(sample, dict) else None
        if not isinstance(conv, dict):
            raise InvalidInput(f"{path}: conversation without a 'conversation' object")
        sessions = sorted((int(m.group(1)), key) for key in conv if (m := _SESSION_KEY.match(key)))
        for num, key in sessions:
            when = conv.get(f"{key}_date_time")
            start = parse_locomo_date(when) if when else None
            msgs = [
                {
                    "role": "user",
                    "speaker": turn["speaker"],
                    "content": locomo_turn_text(turn),
                    "id": turn["dia_id"],
                    # turns inside a session keep their order a second apart
                    "timestamp": start.timestamp() + i if start else None,
                }
                for i, turn in enumerate(conv[key])
                if locomo_turn_text(turn).strip()
            ]
            if msgs:
                yield Batch(
                    user_id=sample.get("sample_id"), session_id=f"session_{num}", messages=msgs
                )
