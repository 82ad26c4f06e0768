"""What the MemOS side and the model process agree on, without torch: how memories are rendered
into a prompt, the fingerprints that tie a KV blob or an adapter to one model and one exact
set of source memories, and the error the model process answers a refused request with."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from ..cube import MemCube

KV_FORMAT = "memos-kv/1"
ADAPTER_FORMAT = "memos-lora/1"
MEMORY_FORMAT = "memos-memory-block/1"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Use the memories below when they are relevant to the request."
)

Emit = Callable[[dict[str, Any]], None]  # how the engine reports progress / text deltas


class RequestError(Exception):
    """A request the model process refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def memory_lines(texts: Sequence[str]) -> list[str]:
    return ["- " + " ".join(t.split("\n")).strip() for t in texts]


def memory_block(texts: Sequence[str], system_prompt: str | None = None) -> str:
    """The system message that carries memories. Memories appended later (plaintext retrieved
    for one request) extend it at the end, so a cached block stays a token prefix."""
    head = system_prompt if system_prompt is not None else DEFAULT_SYSTEM_PROMPT
    if not texts:
        return head
    return "\n".join([head, "", "Memories:", *memory_lines(texts)])


def memory_messages(
    texts: Sequence[str], messages: Sequence[dict[str, Any]], system_prompt: str | None = None
) -> list[dict[str, Any]]:
    """The chat a request sends: the memory block as the system message, then the turns (a
    system message among `messages` is folded into the block)."""
    extra = [m["content"] for m in messages if m.get("role") == "system"]
    head = system_prompt if system_prompt is not None else DEFAULT_SYSTEM_PROMPT
    if extra:
        head = "\n\n".join([head, *extra])
    turns = [dict(m) for m in messages if m.get("role") != "system"]
    return [{"role": "system", "content": memory_block(texts, head)}, *turns]


def model_identity(info: dict[str, Any]) -> dict[str, Any]:
    """The part of a model process's `/v1/memos/info` that a cache or adapter depends on."""
    return {
        "model": info["model"],
        "revision": info["revision"],
        "dtype": info["dtype"],
        "template_sha": info["template_sha"],
    }


def source_signature(cubes: Sequence[MemCube]) -> list[list[Any]]:
    """Id, version and content fingerprint of each source, in order."""
    return [[c.id, c.lifecycle.version, c.governance.fingerprint] for c in cubes]


def activation_fingerprint(
    identity: dict[str, Any],
    sources: Sequence[MemCube],
    system_prompt: str | None,
    adapter: str | None = None,
) -> str:
    """Key of a KV cache: model, revision, dtype, chat template, memory block format and
    system prompt, the adapter it was computed under, and each source cube's content version."""
    body = {
        "format": KV_FORMAT,
        **{k: identity[k] for k in ("model", "revision", "dtype", "template_sha")},
        "block": MEMORY_FORMAT,
        "system_prompt": system_prompt if system_prompt is not None else DEFAULT_SYSTEM_PROMPT,
        "adapter": adapter,
        "sources": source_signature(sources),
    }
    return sha256_text(json.dumps(body, sort_keys=True, ensure_ascii=False))


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 4 characters a token in English)."""
    return max(1, len(text) // 4)
