"""The MemCube: one memory, one id, three forms; scope, provenance, lifecycle, governance."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from .redaction import Redaction

MAX_ID_LEN = 256


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Form(StrEnum):
    plaintext = "plaintext"
    activation = "activation"
    parameter = "parameter"


class State(StrEnum):
    active = "active"
    archived = "archived"
    frozen = "frozen"
    expired = "expired"
    superseded = "superseded"
    deleted = "deleted"


LIVE_STATES: frozenset[State] = frozenset({State.active, State.frozen})
"""The states a cube is found in by search, get-by-scope and list (the one definition of live;
`MemCube.is_live` adds the TTL)."""


class Visibility(StrEnum):
    private = "private"
    shared = "shared"
    public = "public"


class SourceKind(StrEnum):
    message = "message"
    document = "document"
    extraction = "extraction"
    api = "api"
    import_ = "import"
    derived = "derived"


def _has_surrogate(value: str) -> bool:
    """True if `value` holds a lone surrogate (U+D800..U+DFFF): no UTF-8 encoding exists for
    it, so SQLite, PostgreSQL, Chroma and the graph would each fail on it differently."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_name(value: str, what: str) -> str:
    """A scope name: a non-empty string of at most MAX_ID_LEN characters, without control
    characters or lone surrogates."""
    from .errors import InvalidInput

    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInput(f"{what} must not be empty")
    if len(value) > MAX_ID_LEN:
        raise InvalidInput(f"{what} is longer than {MAX_ID_LEN} characters")
    if any(ord(c) < 32 for c in value):
        raise InvalidInput(f"{what} must not contain control characters")
    if _has_surrogate(value):
        raise InvalidInput(f"{what} must not contain lone surrogates (U+D800..U+DFFF)")
    return value


def check_text(value: Any, what: str = "content", max_len: int | None = None) -> str:
    """Stored text (content, a query, a document): a non-empty string of at most `max_len`
    characters (None: no limit), without NUL or lone surrogates. Newlines and other control
    characters are allowed: they are text."""
    from .errors import InvalidInput

    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInput(f"{what} must not be empty")
    check_optional_text(value, what, max_len)
    return value


def check_optional_text(value: Any, what: str, max_len: int | None = MAX_ID_LEN) -> str | None:
    """Like `check_text` for a field that may be None or empty (a speaker, a message id, a
    metadata string): only the type, the length, NUL and lone surrogates are checked."""
    from .errors import InvalidInput

    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}")
    if max_len is not None and len(value) > max_len:
        raise InvalidInput(f"{what} is longer than {max_len} characters")
    if "\x00" in value:
        raise InvalidInput(f"{what} contains a NUL character")
    if _has_surrogate(value):
        raise InvalidInput(f"{what} contains a lone surrogate (U+D800..U+DFFF)")
    return value


MAX_METADATA_DEPTH = 32


def check_metadata(value: Any, what: str = "metadata", _depth: int = 0) -> Any:
    """JSON-shaped data (dicts with string keys, lists, strings, numbers, booleans, None), at
    most MAX_METADATA_DEPTH deep, whose strings hold no NUL or lone surrogates. Returns
    `value`."""
    from .errors import InvalidInput

    if _depth > MAX_METADATA_DEPTH:
        raise InvalidInput(f"{what} is nested deeper than {MAX_METADATA_DEPTH} levels")
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return check_optional_text(value, what, max_len=None)
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidInput(f"{what} keys must be strings, got {type(k).__name__}")
            check_optional_text(k, f"{what} key", max_len=MAX_ID_LEN)
            check_metadata(v, f"{what}[{k!r}]", _depth + 1)
        return value
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_metadata(v, f"{what}[{i}]", _depth + 1)
        return value
    raise InvalidInput(f"{what} must hold only JSON values, got {type(value).__name__}")


class Scope(BaseModel):
    """Where a cube belongs: a vault, and inside it one user (and optionally agent and session)."""

    model_config = ConfigDict(frozen=True)

    vault: str = "default"
    user_id: str
    agent_id: str | None = None
    session_id: str | None = None

    @field_validator("vault", "user_id")
    @classmethod
    def _required(cls, v: str, info: Any) -> str:
        return check_name(v, info.field_name)

    @field_validator("agent_id", "session_id")
    @classmethod
    def _optional(cls, v: str | None, info: Any) -> str | None:
        return None if v is None else check_name(v, info.field_name)


class Provenance(BaseModel):
    """Where the content came from and who made the cube."""

    source_kind: SourceKind = SourceKind.api
    source_refs: list[str] = Field(default_factory=list)
    derived_from: list[str] = Field(default_factory=list)
    created_by: str
    speaker: str | None = None
    role: str | None = None


class Lifecycle(BaseModel):
    """Versions and times: `valid_*` is when the fact held, the rest when it was stored."""

    state: State = State.active
    version: int = 1
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    last_accessed_at: datetime | None = None
    access_count: int = 0
    expires_at: datetime | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None


class Governance(BaseModel):
    visibility: Visibility = Visibility.private
    fingerprint: str = ""
    redactions: list[Redaction] = Field(default_factory=list)


class Organisation(BaseModel):
    tags: list[str] = Field(default_factory=list)
    topic: str | None = None
    concept: str | None = None
    entities: list[str] = Field(default_factory=list)
    importance: float = Field(default=0.5, ge=0.0, le=1.0)


class MemCube(BaseModel):
    """A unit of memory. `content` is text (plaintext) or a blob / adapter reference."""

    id: str = Field(default_factory=new_id)
    form: Form = Form.plaintext
    content: str
    scope: Scope
    provenance: Provenance
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    governance: Governance = Field(default_factory=Governance)
    organisation: Organisation = Field(default_factory=Organisation)
    metadata: dict[str, Any] = Field(default_factory=dict)
    _forged: bool = PrivateAttr(default=False)

    def compute_fingerprint(self) -> str:
        """SHA-256 over what the cube says and where it belongs (not its bookkeeping)."""
        body = json.dumps(
            {
                "form": self.form.value,
                "content": self.content,
                "scope": self.scope.model_dump(mode="json"),
                "version": self.lifecycle.version,
            },
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(body.encode()).hexdigest()

    def seal(self) -> MemCube:
        """Set the fingerprint from the current content; returns self."""
        self.governance.fingerprint = self.compute_fingerprint()
        return self

    @property
    def intact(self) -> bool:
        """The content matches the fingerprint, and the catalog row carried a valid seal."""
        return not self._forged and self.governance.fingerprint == self.compute_fingerprint()

    def mark_forged(self) -> MemCube:
        """The catalog found this row's seal missing or wrong: never serve it."""
        self._forged = True
        return self

    def is_live(self, now: datetime | None = None) -> bool:
        """Active or frozen, and not past its TTL."""
        if self.lifecycle.state not in LIVE_STATES:
            return False
        exp = self.lifecycle.expires_at
        return exp is None or exp > (now or utcnow())

    @property
    def text(self) -> str:
        return self.content


class SearchHit(BaseModel):
    """One search result: the cube and how well it matched (cosine similarity, 1 is best)."""

    cube: MemCube
    score: float

    @property
    def id(self) -> str:
        return self.cube.id

    @property
    def text(self) -> str:
        return self.cube.content


class VersionRecord(BaseModel):
    """One entry of a cube's history: a full snapshot and who changed it, when, how."""

    cube_id: str
    version: int
    op: str
    changed_by: str
    changed_at: datetime
    cube: MemCube


def _none_is_empty(value: Any) -> Any:
    return [] if value is None else value


class ActivationMeta(BaseModel):
    """What an activation cube's `metadata` holds: the KV cache's key and the model it belongs
    to. Stored under the same keys as always (`to_metadata`), so older data reads the same;
    keys this model does not name are kept."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    fingerprint: str | None = None
    model: str | None = None
    revision: str | None = None
    dtype: str | None = None
    template_sha: str | None = None
    adapter: str | None = None
    system_prompt: str | None = None
    sources: list[list[Any]] = Field(default_factory=list, description="[id, version, sha]")
    tokens: int | None = None
    bytes: int | None = None
    build_s: float | None = None

    _no_sources = field_validator("sources", mode="before")(_none_is_empty)

    @classmethod
    def from_cube(cls, cube: MemCube) -> ActivationMeta:
        return cls.model_validate(cube.metadata)

    def to_metadata(self) -> dict[str, Any]:
        return self.model_dump()

    @property
    def source_versions(self) -> dict[str, Any]:
        """Source cube id -> the version the cache was built from."""
        return {s[0]: s[1] for s in self.sources if s}


class ParameterMeta(BaseModel):
    """What a parameter cube's `metadata` holds: the base model and how the adapter was
    trained. Stored under the same keys as always; unknown keys are kept."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    model: str | None = None
    revision: str | None = None
    dtype: str | None = None
    sources: list[list[Any]] = Field(default_factory=list, description="[id, version, sha]")
    examples: int | None = None
    steps: int | None = None
    lr: float | None = None
    rank: int | None = None
    seed: int | None = None
    loss_start: float | None = None
    loss_end: float | None = None
    seconds: float | None = None
    bytes: int | None = None
    trainable_params: int | None = None

    _no_sources = field_validator("sources", mode="before")(_none_is_empty)

    @classmethod
    def from_cube(cls, cube: MemCube) -> ParameterMeta:
        return cls.model_validate(cube.metadata)

    def to_metadata(self) -> dict[str, Any]:
        return self.model_dump()
