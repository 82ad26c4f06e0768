"""The REST API's request and response bodies (pydantic v2, so `/openapi.json` documents them),
and the `CallerDep` dependency (the checks a key adds are `auth.Caller`'s).

Request bodies check types only (a wrong type is a 422); values (k, limits, names, sizes) are
the facade's to check (an InvalidInput is a 400), so every face refuses the same things."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends
from pydantic import BaseModel, ConfigDict, Field

from ..cube import MemCube, VersionRecord
from ..retrieval.models import SearchExplain
from ..store import Channel, Delivery
from .auth import Caller, caller

CallerDep = Annotated[Caller, Depends(caller)]

UserId = Annotated[str | None, Field(description="whose memory (default: the key's own user)")]
VaultName = Annotated[str | None, Field(description="the vault (default: the server's)")]


class Body(BaseModel):
    """A request body: unknown fields are refused (422), so a typo is never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Message(Body):
    role: str = "user"
    content: str
    speaker: str | None = None
    id: str | None = None
    timestamp: datetime | None = None


class AddMemories(Body):
    messages: list[Message] | str = Field(description="a text, or chat messages")
    user_id: UserId = None
    vault: VaultName = None
    agent_id: str | None = None
    session_id: str | None = None
    tags: list[str] | None = None
    ttl: float | None = Field(None, description="seconds until the memories expire")
    mode: Literal["fast", "fine"] = "fast"
    metadata: dict[str, Any] | None = None
    visibility: Literal["private", "shared", "public"] = "private"


class AddDocument(Body):
    text: str
    name: str | None = Field(None, description="where the document came from (its source)")
    user_id: UserId = None
    vault: VaultName = None
    session_id: str | None = None
    tags: list[str] | None = None


class SearchRequest(Body):
    query: str
    user_id: UserId = None
    vault: VaultName = None
    k: int = 5
    mode: Literal["hybrid", "dense"] = "hybrid"
    routes: list[str] | None = Field(None, description="route names: dense, keyword, graph")
    tags: list[str] | None = None
    session_id: str | None = None
    agent_id: str | None = None
    window: int = Field(0, description="session turns either side of each hit, as context")
    explain: bool = Field(False, description="also say how the hits were found")


class UpdateMemory(Body):
    content: str
    expected_version: int | None = Field(
        None, description="the version you read: 409 Conflict if the memory changed since")
    user_id: str | None = Field(None, description="the memory must be this user's")


class Publish(Body):
    cube_id: str | None = Field(None, description="an existing shared memory to publish")
    cube_ids: list[str] = Field(default_factory=list)
    memory: str | None = Field(None, description="a text, stored as a new shared memory")
    user_id: UserId = None
    vault: VaultName = None
    agent_id: str | None = None
    session_id: str | None = None
    tags: list[str] | None = None


class Subscribe(Body):
    subscriber: str
    start: Literal["earliest", "latest"] = "earliest"


class Ack(Body):
    subscriber: str
    seq: int


class Generate(Body):
    prompt: str | list[Message]
    user_id: UserId = None
    vault: VaultName = None
    max_new_tokens: int | None = None
    plan: bool = Field(True, description="let the scheduler choose the memories (false: none)")


class Cubes(BaseModel):
    items: list[MemCube]


class Page(BaseModel):
    items: list[MemCube]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: last")


class Hit(BaseModel):
    id: str
    score: float
    content: str
    cube: MemCube
    routes: list[str] = Field(default_factory=list)
    graph_path: list[str] = Field(default_factory=list)
    dense: float | None = None
    context: list[MemCube] = Field(default_factory=list)


class SearchResponse(BaseModel):
    hits: list[Hit]
    explain: SearchExplain | None = None


class History(BaseModel):
    items: list[VersionRecord]


class Imported(BaseModel):
    items: list[MemCube]
    count: int


class Channels(BaseModel):
    items: list[Channel]


class Deliveries(BaseModel):
    items: list[Delivery]


class Acked(BaseModel):
    channel: str
    subscriber: str
    cursor: int = Field(description="the subscription's cursor: every seq up to it is acked")


class Generated(BaseModel):
    text: str
    finish_reason: str | None
    ttft_s: float | None
    usage: dict[str, Any]
    timings: dict[str, Any]
    activation: str | None = None
    parameter: str | None = None
    plaintext: list[str] = Field(default_factory=list)
    adapter: str | None = None
    planned: bool = False
    notes: list[str] = Field(default_factory=list)
    cached_tokens: int = 0
