"""`MemOS`: the one facade over reader, vault and stores, sync and async."""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel

from .catalog import page_cursor
from .config import MemOSConfig
from .cube import (
    Form,
    Lifecycle,
    MemCube,
    Organisation,
    Provenance,
    Scope,
    SearchHit,
    SourceKind,
    State,
    VersionRecord,
    Visibility,
    check_metadata,
    check_name,
    check_text,
    utcnow,
)
from .embeddings import INT8_MODEL, resolve_embedder
from .errors import Conflict, IntegrityError, InvalidInput, MemOSError
from .governance import (
    SYSTEM,
    Access,
    Action,
    AuditEntry,
    MemGovernance,
    PermissionDenied,
    Role,
    check_principal,
    owner_of,
)
from .lifecycle import (
    OPS,
    RetentionPolicy,
    check_transition,
    expired_by_retention,
    next_version,
    rolled_back,
    version_at,
)
from .reader import MAX_TEXT, MemoryDraft, MemReader, Mode, estimate_importance, extract_entities
from .redaction import RedactionPolicy
from .retrieval import ROUTES, SearchResult, resolve_routes
from .vault import MemVault

if TYPE_CHECKING:
    from .loader import MIPDocument
    from .model.chat import MemOSChatModel
    from .model.client import ChatRequest, ModelClient
    from .model.memory import Generation, ModelMemory, ModelRuntime
    from .scheduler import MemScheduler
    from .store import Channel, Delivery

log = logging.getLogger(__name__)

BATCH = 256
MAX_K = 1000


def _scope(vault: str, user_id: Any, agent_id: Any = None, session_id: Any = None) -> Scope:
    check_name(user_id, "user_id")
    if agent_id is not None:
        check_name(agent_id, "agent_id")
    if session_id is not None:
        check_name(session_id, "session_id")
    return Scope(
        vault=check_name(vault, "vault"), user_id=user_id, agent_id=agent_id, session_id=session_id
    )


def _check_text(text: Any, what: str = "content") -> str:
    return check_text(text, what, MAX_TEXT)


def _plan(mode: Any, routes: Any) -> tuple[str, ...]:
    """The route names of a search: `mode` (a preset) or `routes` (names), not both."""
    if mode not in ("hybrid", "dense"):
        raise InvalidInput("mode must be 'hybrid' or 'dense'")
    if routes is None:
        return resolve_routes(mode)
    if mode != "hybrid":
        raise InvalidInput("give mode='dense' or routes=[...], not both")
    if isinstance(routes, str) or not isinstance(routes, Sequence):
        raise InvalidInput(f"routes must be a list of route names ({', '.join(ROUTES)})")
    return resolve_routes(list(routes))


def _check_tags(tags: Any) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str | bytes | dict) or not isinstance(tags, Sequence | set | frozenset):
        raise InvalidInput("tags must be a list of non-empty strings")
    for t in tags:
        if not isinstance(t, str) or not t.strip():
            raise InvalidInput("tags must be a list of non-empty strings")
        check_name(t, "tag")
    return list(dict.fromkeys(tags))


def _expiry(ttl: float | timedelta | None, expires_at: datetime | None) -> datetime | None:
    if ttl is not None and expires_at is not None:
        raise InvalidInput("give ttl or expires_at, not both")
    if ttl is None:
        if expires_at is not None:
            _check_time(expires_at, "expires_at")
        return expires_at
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise InvalidInput("ttl must be a positive number of seconds or a timedelta")
    try:
        return utcnow() + timedelta(seconds=seconds)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"ttl of {seconds} seconds is out of range") from exc


def _check_time(when: Any, what: str) -> datetime:
    if not isinstance(when, datetime):
        raise InvalidInput(f"{what} must be a datetime, got {type(when).__name__}")
    if when.tzinfo is None:
        raise InvalidInput(f"{what} must be timezone-aware")
    return when


def _query_of(prompt: Any) -> str | None:
    """The text a generation's plan searches for: the prompt, or its last message's content
    (None when there is no text to search: the generation itself refuses such a prompt)."""
    if isinstance(prompt, Sequence) and not isinstance(prompt, str) and prompt:
        prompt = prompt[-1]
    if isinstance(prompt, dict):
        prompt = prompt.get("content")
    elif not isinstance(prompt, str):
        prompt = getattr(prompt, "content", None)
    if not isinstance(prompt, str) or not prompt.strip() or "\x00" in prompt:
        return None
    return prompt[:MAX_TEXT]


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be an integer from 1 to {MAX_K}")
    return k


class PurgeAudit(BaseModel):
    """The audit entry of a purge: its place in the chain and its hash."""

    seq: int
    hash: str


class PurgeReceipt(BaseModel):
    """What `MemOS.purge` erased: version rows, vectors, graph facts and blob files of the
    cube, and the audit entry that records it."""

    id: str
    purged: bool = True
    versions: int
    vectors: int
    graph_facts: int
    blobs: int
    audit: PurgeAudit


Planned = TypeVar("Planned", "Generation", "ChatRequest")


def _planned(out: Planned, plan: Any) -> Planned:
    """`out` (a Generation or ChatRequest) marked as planned by `plan`, with its reasons."""
    if plan is not None:
        out.planned = True
        out.notes = [s.reason for s in plan.steps] + plan.notes
    return out


@dataclass
class _Parts:
    """The components a MemOS builds on first use; one holder shared by all its views."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    runtime: ModelRuntime | None = None
    memory: ModelMemory | None = None
    scheduler: MemScheduler | None = None


class MemOS:
    """Memory for agents. `MemOS.open("./.memos")` and go."""

    def __init__(
        self, config: MemOSConfig, vault: MemVault, reader: MemReader, principal: str = SYSTEM
    ) -> None:
        from .store import MemStore

        self.config = config
        self.vault = vault
        self.reader = reader
        self.memstore = MemStore(vault.catalog)
        self.governance = MemGovernance(vault.catalog, data_dir=config.data_dir)
        self.principal = check_principal(principal)
        # built on first use, shared by every view (views copy this holder, not its parts)
        self._parts = _Parts()

    def as_principal(self, principal: str) -> MemOS:
        """A view of the same stores whose every call runs as `principal` (`user:<id>`,
        `agent:<id>`): reads are filtered and writes checked by MemGovernance."""
        view = copy.copy(self)
        view.principal = check_principal(principal)
        return view

    def _actor(self, fallback: str) -> str:
        return fallback if self.principal == SYSTEM else self.principal

    def gate(
        self,
        op: str,
        action: Action,
        *,
        cubes: Sequence[MemCube] = (),
        scope: Scope | None = None,
        detail: str = "",
        check_only: bool = False,
    ) -> None:
        """The one gate of every face (facade, store, adapters, channels, model, loader, CLI):
        `principal` must be allowed `action` on `cubes` and in `scope` (a user's memory in a
        vault); the call is audited either way, and PermissionDenied is raised before anything
        is written. `check_only`: audit only a refusal (the caller writes the entry of an
        allowed call itself, once it knows the ids it writes, still before writing)."""
        vault = scope.vault if scope is not None else None
        try:
            if scope is not None:
                self.governance.check_vault(self.principal, scope.vault, action, scope.user_id)
            if cubes:
                self.governance.check(self.principal, action, cubes)
        except PermissionDenied:
            self._audit(op, cubes, outcome="denied", vault=vault, detail=detail)
            raise
        if not check_only:
            self._audit(op, cubes, vault=vault, detail=detail)

    def _audit(
        self,
        op: str,
        cubes: Sequence[MemCube],
        outcome: str = "ok",
        *,
        vault: str | None = None,
        detail: str = "",
    ) -> None:
        self.governance.audit(
            self.principal,
            op,
            cube_ids=[c.id for c in cubes],
            vault=cubes[0].scope.vault if cubes else vault,
            outcome=outcome,
            detail=detail,
        )

    def readable(self, cubes: Sequence[MemCube], principal: str | None = None) -> list[MemCube]:
        """The cubes `principal` (default: this view's) may read."""
        who = principal or self.principal
        return [
            c
            for c, ok in zip(cubes, self.governance.allowed(who, Action.read, cubes), strict=True)
            if ok
        ]

    @classmethod
    def open(
        cls,
        path: str | Path | None = None,
        *,
        embedder: Any = None,
        llm: Any = None,
        principal: str = SYSTEM,
        scheduler: bool | float | None = None,
        **settings: Any,
    ) -> MemOS:
        """Open (or create) the data dir. `settings` are `MemOSConfig` fields; `embedder` may be
        a model name or any LangChain `Embeddings`; `llm` any LangChain chat model (fine mode).
        `scheduler`: start the scheduler's background worker (True: policy passes every
        `tick_interval_s`; a number: every that many seconds; default: the `MEMOS_SCHEDULER`
        environment variable, off when unset); `close()` stops it."""
        from .audit import load_key
        from .catalog import Catalog
        from .graph import open_graph
        from .settings import scheduler_switch
        from .vector.chroma import ChromaIndex

        switch = scheduler_switch(scheduler)

        if path is not None:
            settings["data_dir"] = Path(path)
        if isinstance(embedder, str):
            settings["embedder"] = embedder
            embedder = None
        try:
            config = MemOSConfig(**settings)
        except Exception as exc:
            raise InvalidInput(f"bad configuration: {exc}") from exc
        data_dir = config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "blobs").mkdir(exist_ok=True)
        catalog = Catalog(config.resolved_catalog_url(), key=load_key(data_dir),
                          local_dir=data_dir)
        index = ChromaIndex(
            path=data_dir / "chroma", url=config.chroma_url, shared=config.vector_server
        )
        try:
            graph = open_graph(config.graph_url, data_dir, idle_timeout=config.graph_idle_timeout)
            spec = embedder or config.embedder
            if spec is None and catalog.get_meta("embedder") == INT8_MODEL:
                spec = INT8_MODEL  # a packaged embedder: reopen the dir in its own space
            # one chat model for the reader (fine mode), query intents and topic names
            vault = MemVault(catalog, index, graph, resolve_embedder(spec), llm=llm)
        except BaseException:
            index.close()  # frees the dir (and a shared vector server) for other processes
            raise
        mem = cls(config, vault, MemReader(llm=llm), principal=principal)
        repaired = vault.reconcile()
        if repaired:
            log.warning("re-indexed %d cube(s) left pending by an earlier run", repaired)
        if switch is not False:
            mem._sched().start(interval=None if switch is True else switch)
        return mem

    # context management
    def close(self) -> None:
        """Stop this MemOS's scheduler worker and model runtime client, release the stores."""
        if self._parts.scheduler is not None:
            self._parts.scheduler.stop()
        if self._parts.runtime is not None:
            self._parts.runtime.close()
        self.vault.close()

    def __enter__(self) -> MemOS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # writes
    def add(
        self,
        messages: Any,
        *,
        user_id: str,
        session_id: str | None = None,
        agent_id: str | None = None,
        vault: str | None = None,
        mode: Mode = "fast",
        tags: Sequence[str] | None = None,
        ttl: float | timedelta | None = None,
        expires_at: datetime | None = None,
        visibility: Visibility | str = Visibility.private,
        metadata: dict[str, Any] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[MemCube]:
        """Remember messages (a string, a dict, LangChain messages, or a list of them).
        fast mode stores one cube per turn; fine mode stores the facts a chat model extracts."""
        scope = _scope(vault or self.config.vault, user_id, agent_id, session_id)
        if isinstance(messages, str):
            messages = [{"role": "user", "content": _check_text(messages)}]
        drafts = self.reader.read_messages(messages, mode=mode)
        return self._store(
            drafts,
            scope,
            tags=tags,
            expiry=_expiry(ttl, expires_at),
            visibility=visibility,
            metadata=metadata,
            progress=progress,
        )

    def add_document(
        self,
        document: str | Path,
        *,
        user_id: str,
        source: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        vault: str | None = None,
        tags: Sequence[str] | None = None,
        ttl: float | timedelta | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[MemCube]:
        """Remember a document (text, or a path to a text file), split into chunks."""
        scope = _scope(vault or self.config.vault, user_id, agent_id, session_id)
        if isinstance(document, Path):
            try:
                text = document.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidInput(f"cannot read document {document}: {exc}") from exc
            source = source or document.name
        else:
            text = _check_text(document, "document")
        drafts = self.reader.read_document(text, source=source)
        return self._store(
            drafts,
            scope,
            tags=tags,
            expiry=_expiry(ttl, None),
            visibility=Visibility.private,
            metadata=metadata,
        )

    def _store(
        self,
        drafts: Sequence[MemoryDraft],
        scope: Scope,
        *,
        tags: Sequence[str] | None,
        expiry: datetime | None,
        visibility: Visibility | str,
        metadata: dict[str, Any] | None,
        progress: Callable[[int], None] | None = None,
    ) -> list[MemCube]:
        tag_list = _check_tags(tags)
        try:
            vis = Visibility(visibility)
        except ValueError as exc:
            raise InvalidInput(
                f"visibility must be one of {[v.value for v in Visibility]}"
            ) from exc
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidInput("metadata must be a dict")
        check_metadata(metadata)
        self.gate("add", Action.write, scope=scope, check_only=True)
        # the vault's write path redacts every stored field (MemVault.prepare)
        creator = self._actor(
            f"agent:{scope.agent_id}" if scope.agent_id else f"user:{scope.user_id}"
        )
        now = utcnow()
        cubes = [
            MemCube(
                form=Form.plaintext,
                content=d.text,
                scope=scope,
                provenance=Provenance(
                    source_kind=d.source_kind,
                    source_refs=d.source_refs,
                    created_by=creator,
                    speaker=d.speaker,
                    role=d.role,
                ),
                # a microsecond apart, so a batch keeps its order in time-ordered reads
                lifecycle=Lifecycle(
                    created_at=now + timedelta(microseconds=i),
                    updated_at=now + timedelta(microseconds=i),
                    expires_at=expiry,
                    valid_from=d.valid_from or now + timedelta(microseconds=i),
                ),
                governance={"visibility": vis},
                organisation=Organisation(
                    tags=list(dict.fromkeys([*tag_list, *d.tags])),
                    entities=d.entities,
                    importance=d.importance,
                ),
                metadata={**d.metadata, **(metadata or {})},
            )
            for i, d in enumerate(drafts)
        ]
        self._audit("add", cubes, vault=scope.vault)
        for start in range(0, len(cubes), BATCH):
            chunk = cubes[start : start + BATCH]
            self.vault.add(chunk, created_by=creator)
            if progress is not None:
                progress(len(chunk))
        return cubes

    def set_redaction_policy(self, vault: str, policy: RedactionPolicy | None) -> None:
        """Mask personal data in everything written to `vault` from now on (None: stop): every
        stored text field of every write (add, update, store puts, imports), see
        `MemVault.prepare`."""
        check_name(vault, "vault")
        self._check_admin(vault)
        settings = self.vault.catalog.settings
        if policy is None:
            settings.delete(RedactionPolicy, vault, legacy_key=f"redaction:{vault}")
        else:
            settings.set(policy, vault)
        self._audit("set_redaction_policy", [], vault=vault)

    def update(
        self,
        cube_id: str,
        content: str,
        *,
        user_id: str | None = None,
        by: str | None = None,
        valid_from: datetime | None = None,
        tags: Sequence[str] | None = None,
        expected_version: int | None = None,
    ) -> MemCube:
        """Replace a cube's content as a new version; earlier versions stay in `history`.
        With `expected_version` (the version you read), Conflict if the cube changed since:
        a read-modify-write never loses an update."""
        _check_text(content)
        if valid_from is not None:
            _check_time(valid_from, "valid_from")
        if expected_version is not None and (
            isinstance(expected_version, bool) or not isinstance(expected_version, int)
        ):
            raise InvalidInput("expected_version must be an integer version number")
        cube = self.vault.get(cube_id, scope_user=user_id)
        self.gate("update", Action.write, cubes=[cube], check_only=True)
        if expected_version is not None and expected_version != cube.lifecycle.version:
            raise Conflict(
                f"cube {cube_id} is at version {cube.lifecycle.version}, not {expected_version}"
            )
        if cube.lifecycle.state is not State.active:
            raise InvalidInput(
                f"cube {cube_id} is {cube.lifecycle.state.value}; only active cubes change"
            )
        if cube.form is not Form.plaintext:
            raise InvalidInput(
                f"cube {cube_id} is {cube.form.value} memory; its content is not text"
            )
        old_version = cube.lifecycle.version
        now = utcnow()
        entities = extract_entities(content)
        if cube.provenance.speaker:
            entities = [cube.provenance.speaker, *entities]
        organisation = cube.organisation.model_copy(
            update={
                "entities": list(dict.fromkeys(entities)),
                "importance": estimate_importance(content, entities),
                **({} if tags is None else {"tags": _check_tags(tags)}),
            }
        )
        new = next_version(
            cube,
            when=now,
            content=content,
            organisation=organisation,
            provenance=cube.provenance.model_copy(update={"source_kind": SourceKind.api}),
            valid_from=valid_from or now,
        )
        self._audit("update", [new])
        self.vault.write_version(new, "update", by or self._actor(owner_of(cube)), old_version)
        return new

    def delete(self, cube_id: str, *, user_id: str | None = None, by: str | None = None) -> MemCube:
        """Soft delete: the cube becomes a tombstone (no longer found); `purge` erases it."""
        cube = self.vault.get(cube_id, scope_user=user_id, expired=True)
        if cube.lifecycle.state is State.deleted:
            return cube
        return self.transition(cube_id, State.deleted, user_id=user_id, by=by)

    def transition(
        self,
        cube_id: str,
        state: State | str,
        *,
        user_id: str | None = None,
        by: str | None = None,
    ) -> MemCube:
        """Move a cube to another lifecycle state (archive, freeze, restore, ...) as a new
        version; only the transitions in `lifecycle.TRANSITIONS` are allowed."""
        try:
            to = State(state)
        except ValueError as exc:
            raise InvalidInput(f"state must be one of {[s.value for s in State]}") from exc
        cube = self.vault.get(cube_id, scope_user=user_id, expired=True)
        self.gate(to.value, Action.delete if to is State.deleted else Action.write, cubes=[cube],
                  check_only=True)
        check_transition(cube, to)
        new = next_version(cube, to)
        op = OPS[to]
        self._audit(op, [new])
        self.vault.write_version(new, op, by or self._actor(owner_of(cube)), cube.lifecycle.version)
        return new

    def rollback(self, cube_id: str, version: int, *, user_id: str | None = None) -> MemCube:
        """Make an earlier version current again, as a new version (nothing is rewritten)."""
        cube = self.vault.get(cube_id, scope_user=user_id)
        self.gate("rollback", Action.write, cubes=[cube], check_only=True)
        if cube.lifecycle.state is State.deleted:
            raise InvalidInput(f"cube {cube_id} is deleted; restore it before rolling back")
        target = next(
            (v for v in self.vault.catalog.history(cube_id) if v.version == version), None
        )
        if target is None or version == cube.lifecycle.version:
            raise InvalidInput(f"cube {cube_id} has no earlier version {version!r}")
        if not target.cube.intact:
            raise IntegrityError(f"version {version} of cube {cube_id} was altered; not restored")
        new = rolled_back(cube, target)
        self._audit("rollback", [new], detail=f"to v{version}")
        self.vault.write_version(
            new, "rollback", self._actor(owner_of(cube)), cube.lifecycle.version
        )
        return new

    def set_retention(self, vault: str, policy: RetentionPolicy | None) -> None:
        """Retention for a vault (max age, max count per user); `sweep` applies it."""
        check_name(vault, "vault")
        self._check_admin(vault, "set_retention")
        settings = self.vault.catalog.settings
        if policy is None:
            settings.delete(RetentionPolicy, vault, legacy_key=f"retention:{vault}")
        else:
            settings.set(policy, vault)
        self._audit("set_retention", [], vault=vault)

    def sweep(self, now: datetime | None = None) -> dict[str, int]:
        """Move cubes past their TTL to `expired` and archive what retention policies say;
        returns how many of each. The scheduler runs it, and the process owner (system)."""
        if self.principal != SYSTEM:
            self._audit("sweep", [], outcome="denied")
            raise PermissionDenied(f"{self.principal} may not sweep; only the system does")
        now = now or utcnow()
        catalog = self.vault.catalog
        expired = archived = 0
        for cube in catalog.past_expiry(now):
            self.vault.write_version(
                next_version(cube, State.expired, now), "expire", SYSTEM, cube.lifecycle.version
            )
            expired += 1
        for vault in catalog.vaults():
            policy = catalog.settings.get(RetentionPolicy, vault, legacy_key=f"retention:{vault}")
            if policy is None:
                continue
            live = catalog.list(vault=vault, states=[State.active], limit=10**9)
            for cube in expired_by_retention(live, policy, now):
                self.vault.write_version(
                    next_version(cube, State.archived, now),
                    "archive",
                    SYSTEM,
                    cube.lifecycle.version,
                )
                archived += 1
        if expired or archived:
            self.governance.audit(SYSTEM, "sweep", detail=f"expired={expired} archived={archived}")
        return {"expired": expired, "archived": archived}

    def as_of(
        self,
        when: datetime,
        *,
        user_id: str,
        vault: str | None = None,
        query: str | None = None,
        k: int = 10,
    ) -> list[MemCube]:
        """What was true for this user at `when` (bi-temporal: each version holds from its
        valid_from until the next one's). With `query`, the `k` most similar, best first."""
        _check_time(when, "when")
        _check_k(k)
        scope = _scope(vault or self.config.vault, user_id)
        held = [
            c
            for h in self.vault.catalog.histories(scope.vault, scope.user_id).values()
            if (c := version_at(h, when)) is not None
        ]
        held = self.readable(held)
        if query is not None:
            _check_text(query, "query")
            q = self.vault.embedder.embed_query(query)
            vecs = self.vault.embedder.embed_documents([c.content for c in held])
            ranked = sorted(
                zip(held, vecs, strict=True),
                key=lambda cv: -sum(a * b for a, b in zip(q, cv[1], strict=True)),
            )
            held = [c for c, _ in ranked[:k]]
        self._audit("as_of", held, vault=scope.vault, detail=when.isoformat())
        return held

    def purge(self, cube_id: str, *, user_id: str | None = None) -> PurgeReceipt:
        """Erase a cube and all its versions from the catalog, the vector index, the graph and
        the blob folder; the receipt says what went and names the audit entry (written
        first)."""
        cube = self.vault.get(cube_id, scope_user=user_id, expired=True)
        self.gate("purge", Action.purge, cubes=[cube], check_only=True)
        seq = self.governance.audit_chain.append(
            self.principal, "purge", cube_ids=[cube.id], vault=cube.scope.vault
        )
        report = self.vault.purge(cube, blobs=self.config.data_dir / "blobs")
        self.governance.revoke_cube(cube.id)
        entries = self.governance.audit_log(cube_id=cube.id, limit=10**9)
        entry = next(e for e in reversed(entries) if e.seq == seq)
        return PurgeReceipt(id=cube.id, **report.model_dump(),
                            audit=PurgeAudit(seq=seq, hash=entry.hash))

    # reads
    def search(
        self,
        query: str,
        *,
        user_id: str,
        k: int = 5,
        vault: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        tags: Sequence[str] | None = None,
        min_score: float | None = None,
        mode: Literal["hybrid", "dense"] = "hybrid",
        routes: Sequence[str] | None = None,
        as_of: datetime | None = None,
        window: int = 0,
        explain: bool = False,
    ) -> list[SearchHit]:
        """The `k` live cubes of this user that best answer `query`, best first.

        hybrid (default): the query's intent (entities, concepts, time range) routed to the
        dense index, BM25 and the graph, fused; `score` is the fused relevance in (0, 1].
        dense: cosine similarity alone (`score` is the cosine); the same as `routes=["dense"]`.
        `routes`: which routes to run, by name: "dense" (the embedding index), "keyword" (BM25
        over each turn and over each turn with its session neighbours), "graph" (entities and
        concepts -> facts); several are fused, "dense" alone is not. `min_score` bounds the
        cosine. `as_of`: what was current then (superseded facts included). `window`: each hit
        carries that many session turns either side in `hit.context`. How the hits were found:
        `explain(...)` (`explain=True` here is its deprecated alias, for one release)."""
        if explain:
            warnings.warn("MemOS.search(..., explain=True) is deprecated; use MemOS.explain(...)",
                          DeprecationWarning, stacklevel=2)
            return self.explain(  # type: ignore[return-value]
                query, user_id=user_id, k=k, vault=vault, agent_id=agent_id,
                session_id=session_id, tags=tags, min_score=min_score, mode=mode, routes=routes,
                as_of=as_of, window=window)
        hits, _ = self._search(query, user_id, k, vault, agent_id, session_id, tags, min_score,
                               mode, routes, as_of, window, explain=False)
        return hits

    def explain(
        self,
        query: str,
        *,
        user_id: str,
        k: int = 5,
        vault: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        tags: Sequence[str] | None = None,
        min_score: float | None = None,
        mode: Literal["hybrid", "dense"] = "hybrid",
        routes: Sequence[str] | None = None,
        as_of: datetime | None = None,
        window: int = 0,
    ) -> SearchResult:
        """`search`, with how it found its hits: `SearchResult(hits, explain)`, where `explain`
        holds the intent, every stage's candidates and cost, the fused scores and their parts,
        the time range and what was dropped; the last stage's `detail["hot"]` maps each hit a
        live KV cache (one this principal may read) holds to that cache's id."""
        hits, ex = self._search(query, user_id, k, vault, agent_id, session_id, tags, min_score,
                                mode, routes, as_of, window, explain=True)
        assert ex is not None
        if ex.stages:
            ex.stages[-1].detail["hot"] = self._hot(hits, user_id, vault or self.config.vault)
        return SearchResult(hits=hits, explain=ex)

    def _hot(self, hits: Sequence[SearchHit], user_id: str, vault: str) -> dict[str, str]:
        """Hit id -> id of the user's live KV cache (one this principal may read) holding it."""
        caches = self.vault.catalog.active_cubes(form=Form.activation, vault=vault,
                                                 user_id=user_id)
        held = {i: c.id for c in self.readable(caches) for i in c.provenance.derived_from}
        return {h.id: held[h.id] for h in hits if h.id in held}

    def _search(
        self, query: str, user_id: str, k: int, vault: str | None, agent_id: str | None,
        session_id: str | None, tags: Sequence[str] | None, min_score: float | None,
        mode: str, routes: Sequence[str] | None, as_of: datetime | None, window: int,
        explain: bool, audit: bool = True,
    ) -> tuple[list[SearchHit], Any]:
        _check_text(query, "query")
        _check_k(k)
        if min_score is not None and (
            isinstance(min_score, bool) or not isinstance(min_score, int | float)
            or not -1.0 <= min_score <= 1.0
        ):
            raise InvalidInput("min_score must be a number from -1 to 1 (a cosine)")
        if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= 50:
            raise InvalidInput("window must be an integer from 0 to 50")
        if as_of is not None and (not isinstance(as_of, datetime) or as_of.tzinfo is None):
            raise InvalidInput("as_of must be a timezone-aware datetime")
        plan = _plan(mode, routes)
        scope = _scope(vault or self.config.vault, user_id, agent_id, session_id)
        found, ex = self.vault.route(
            query, scope, k, routes=plan, tags=_check_tags(tags), min_score=min_score,
            as_of=as_of, window=window, explain=explain,
        )
        hits: list[SearchHit] = list(found)
        if self.principal != SYSTEM and self.principal != f"user:{scope.user_id}":
            keep = {c.id for c in self.readable([h.cube for h in hits])}
            hits = [h for h in hits if h.cube.id in keep]
        if audit:
            self._audit("search", [h.cube for h in hits], vault=scope.vault)
        return hits, ex

    def get(self, cube_id: str, *, user_id: str | None = None) -> MemCube:
        cube = self.vault.get(cube_id, scope_user=user_id)
        self.gate("get", Action.read, cubes=[cube])
        return cube

    def history(self, cube_id: str, *, user_id: str | None = None) -> list[VersionRecord]:
        """Every version of a cube, oldest first, with who changed it and when."""
        cube = self.vault.get(cube_id, scope_user=user_id, expired=True)
        self.gate("history", Action.read, cubes=[cube])
        return self.vault.catalog.history(cube_id)

    def list(
        self,
        *,
        user_id: str,
        vault: str | None = None,
        session_id: str | None = None,
        include_deleted: bool = False,
        limit: int = 100,
        offset: int = 0,
        after: str | None = None,
    ) -> list[MemCube]:
        """A user's cubes, oldest first: up to `limit` that this principal may read (live ones
        unless `include_deleted`), skipping `offset` rows, or after `after` (the
        `catalog.page_cursor` of the last cube of the previous page: keyset paging, which
        stays stable while cubes are added)."""
        scope = _scope(vault or self.config.vault, user_id, None, session_id)
        states = None if include_deleted else [State.active, State.frozen]
        out: list[MemCube] = []
        while True:  # rows this principal may not read are skipped: fetch on to fill the page
            cubes = self.vault.catalog.list(
                vault=scope.vault,
                user_id=scope.user_id,
                session_id=session_id,
                states=states,
                limit=limit,
                offset=offset,
                after=after,
            )
            out += self.readable([c for c in cubes if include_deleted or c.is_live()])
            if len(cubes) < limit or len(out) >= limit:
                break
            offset, after = 0, page_cursor(cubes[-1])
        out = out[:limit]
        self._audit("list", out, vault=scope.vault)
        return out

    def graph(self, *, user_id: str, vault: str | None = None) -> Any:
        """The topic -> concept -> fact hierarchy of a user's memory (`.render()` gives a text
        tree, `.to_dot()` Graphviz)."""
        scope = _scope(vault or self.config.vault, user_id)
        self.gate("graph", Action.read, scope=scope)
        tree = self.vault.operator.hierarchy(scope.vault, scope.user_id)
        if self.principal in (SYSTEM, f"user:{scope.user_id}"):
            return tree
        return self._readable_tree(tree)

    def _readable_tree(self, tree: Any) -> Any:
        """The part of a topic tree this principal may read: facts it may read, the concepts
        that still hold one, topics named after those (never after hidden facts)."""
        ids = {f["id"] for t in tree.topics for c in t.concepts for f in c["facts"]}
        ids |= {e["id"] for t in tree.topics for e in t.events}
        cubes = self.vault.catalog.get_many(sorted(ids))
        keep = {c.id for c in self.readable(list(cubes.values()))}
        topics = []
        for t in tree.topics:
            concepts = [
                {**c, "facts": [f for f in c["facts"] if f["id"] in keep]} for c in t.concepts
            ]
            concepts = [c for c in concepts if c["facts"]]
            if concepts:
                label = ", ".join(c["name"] for c in concepts[:3])
                size = len({f["id"] for c in concepts for f in c["facts"]})
                topics.append(
                    t.model_copy(update={"concepts": concepts, "label": label, "size": size,
                                         "events": [e for e in t.events if e["id"] in keep],
                                         "entities": []})  # names of hidden facts: none
                )
        return tree.model_copy(update={"topics": topics})

    def stats(self) -> dict[str, Any]:
        """Counts of cubes, vectors and graph nodes across the data dir (system only)."""
        if self.principal != SYSTEM:
            self._audit("stats", [], outcome="denied")
            raise PermissionDenied(f"{self.principal} may not read the stats of all vaults")
        self._audit("stats", [])
        out = self.vault.stats()
        out["data_dir"] = str(self.config.data_dir)
        return out

    # MemGovernance: roles, grants, audit
    def grant_role(self, vault: str, principal: str, role: Role | str) -> None:
        """Give `principal` a role in `vault` (needs admin there, or system)."""
        self._check_admin(vault, "grant_role")
        self.governance.grant_role(vault, principal, role, by=self.principal)
        self._audit("grant_role", [], vault=vault, detail=f"{principal}={role}")

    def revoke_role(self, vault: str, principal: str) -> bool:
        check_principal(principal)
        self._check_admin(vault, "revoke_role")
        done = self.governance.revoke_role(vault, principal)
        self._audit("revoke_role", [], vault=vault, detail=principal)
        return done

    def _check_admin(self, vault: str, op: str = "admin") -> None:
        check_name(vault, "vault")
        role = self.governance.role(vault, self.principal)
        if self.principal != SYSTEM and role not in (Role.admin, Role.owner):
            self._audit(op, [], outcome="denied", vault=vault)
            raise PermissionDenied(f"{self.principal} is not an admin of vault {vault!r}")

    def share(self, cube_id: str, principal: str, access: Access | str = Access.read) -> None:
        """Share one cube with another principal, read-only or read-write (revocable)."""
        check_principal(principal)
        try:
            access = Access(access)
        except ValueError as exc:
            raise InvalidInput("access must be 'read' or 'write'") from exc
        cube = self.vault.get(cube_id)
        self.gate("share", Action.admin if self.principal != owner_of(cube) else Action.read,
                  cubes=[cube], detail=f"{principal}:{access.value}")
        self.governance.share(cube.id, principal, access, by=self.principal)

    def unshare(self, cube_id: str, principal: str) -> bool:
        check_principal(principal)
        cube = self.vault.get(cube_id)
        self.gate("unshare", Action.admin if self.principal != owner_of(cube) else Action.read,
                  cubes=[cube], detail=principal)
        return self.governance.unshare(cube.id, principal)

    def audit_log(self, cube_id: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        """The audit entries (about `cube_id`), oldest first; a principal other than system
        sees only its own."""
        entries = self.governance.audit_log(cube_id=cube_id, limit=limit)
        if self.principal != SYSTEM:
            entries = [e for e in entries if e.principal == self.principal]
        self._audit("audit_log", [], detail=cube_id or "")
        return entries

    def verify_audit(self) -> tuple[bool, int | None]:
        """Check the audit hash chain: (intact, first bad seq). System only."""
        if self.principal != SYSTEM:
            self._audit("verify_audit", [], outcome="denied")
            raise PermissionDenied(f"{self.principal} may not verify the audit log")
        return self.governance.verify_audit()

    # MemLoader / MemDumper: the Memory Interchange Protocol
    def export(
        self,
        path: str | Path | None = None,
        *,
        vault: str | None = None,
        user_id: str | None = None,
        tags: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        include_deleted: bool = False,
    ) -> MIPDocument:
        """Export readable cubes (with versions, redactions, access log, and the blobs of
        activation and parameter cubes) as MIP; to `path` too."""
        from .loader import MemDumper

        for name, value in (("vault", vault), ("user_id", user_id)):
            if value is not None:
                check_name(value, name)
        if tags is not None and (
            not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags)
        ):
            raise InvalidInput("tags must be a list of strings")
        for name, when in (("since", since), ("until", until)):
            if when is not None and (not isinstance(when, datetime) or when.tzinfo is None):
                raise InvalidInput(f"{name} must be a timezone-aware datetime")
        blobs = self.config.data_dir / "blobs"
        doc = MemDumper(self.vault.catalog, self.governance, blobs=blobs).dump(
            principal=self.principal,
            vault=vault,
            user_id=user_id,
            tags=tags,
            since=since,
            until=until,
            include_deleted=include_deleted,
        )
        self.gate("export", Action.read, cubes=[i.cube for i in doc.cubes],
                  detail=f"{len(doc.cubes)} cube(s)")
        if path is not None:
            try:
                Path(path).write_text(doc.model_dump_json(indent=1), encoding="utf-8")
            except (OSError, ValueError, TypeError) as exc:  # ValueError: NUL in the path
                raise InvalidInput(f"cannot write {path!r}: {exc}") from exc
        return doc

    def import_file(
        self,
        source: str | Path | MIPDocument,
        *,
        vault: str | None = None,
        user_id: str | None = None,
    ) -> list[MemCube]:
        """Import a MIP file, optionally into a new vault / user scope; history and lineage
        are kept. The file is untrusted: all of it is checked (schema, fingerprints, sizes,
        blob names, see `memos_agents.loader`) and the principal's right to write every scope
        it names, before anything is written; a refused file writes nothing. Imported cubes
        are created by this principal, get new ids where theirs exist or are not fresh, and
        pass the vault's redaction policy."""
        from .loader import MemLoader, MIPDocument, read_mip

        if vault is not None:
            check_name(vault, "vault")
        if user_id is not None:
            check_name(user_id, "user_id")
        if isinstance(source, MIPDocument):
            doc = source
        elif isinstance(source, str | Path):
            doc = read_mip(Path(source))
        else:
            raise InvalidInput("source must be a path or a MIPDocument")
        loader = MemLoader(self.vault, self.governance, blobs=self.config.data_dir / "blobs")
        plan = loader.plan(doc, principal=self.principal, vault=vault, user_id=user_id)
        for scope in plan.scopes:  # every target scope, all before anything is written
            self.gate("import", Action.write, scope=scope, detail=f"into {scope.user_id}")
        cubes = loader.write(plan)
        self._audit("import", cubes, vault=vault, detail=f"{len(cubes)} cube(s)")
        return cubes

    # MemStore: channels between agents
    def publish(
        self,
        channel: str,
        memory: str | MemCube | Sequence[str | MemCube] | None = None,
        *,
        user_id: str,
        cube_ids: Sequence[str] = (),
        agent_id: str | None = None,
        session_id: str | None = None,
        vault: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> list[Delivery]:
        """Publish to a channel. Text becomes a new shared cube of the publisher; existing cubes
        (objects or `cube_ids`) must belong to `user_id` and be shared or public. The principal
        must be allowed to write in `user_id`'s scope and on each cube it publishes; everything
        is checked before anything is written (audit: "publish", then "add" for new text)."""
        from .store import Delivery, check_channel

        check_channel(channel)
        items = [] if memory is None else [memory] if isinstance(memory, str | MemCube) else memory
        if isinstance(cube_ids, str) or not isinstance(cube_ids, Sequence):
            raise InvalidInput("cube_ids must be a list of cube ids")
        if isinstance(items, str | bytes) or not isinstance(items, Sequence):
            raise InvalidInput("memory must be a text, a cube, or a list of them")
        if not items and not cube_ids:
            raise InvalidInput("nothing to publish")
        scope = _scope(vault or self.config.vault, user_id, agent_id, session_id)
        # who published: this view's principal (a system call names the user or agent)
        by = self._actor(f"agent:{agent_id}" if agent_id else f"user:{user_id}")
        ids = [check_name(i, "cube id") for i in cube_ids]
        ids += [m.id for m in items if isinstance(m, MemCube)]
        texts = [_check_text(m) for m in items if not isinstance(m, MemCube)]
        if tags is not None and not isinstance(tags, Sequence):
            raise InvalidInput("tags must be a list of non-empty strings")
        tag_list = _check_tags(tags)
        cubes = [self.vault.get(i, scope_user=scope.user_id) for i in ids]
        self.memstore.check_publishable(cubes)
        self.gate("publish", Action.write, cubes=cubes, scope=scope, detail=f"channel={channel}")
        if texts:
            cubes += self.add(
                [{"role": "assistant" if agent_id else "user", "content": t} for t in texts],
                user_id=user_id,
                agent_id=agent_id,
                session_id=session_id,
                vault=scope.vault,
                tags=tag_list,
                visibility=Visibility.shared,
            )
        seqs = self.memstore.publish(channel, cubes, published_by=by)
        return [
            Delivery(seq=s, channel=channel, cube=c, published_by=by, published_at=utcnow())
            for s, c in zip(seqs, cubes, strict=True)
        ]

    def subscribe(
        self, channel: str, subscriber: str, *, start: Literal["earliest", "latest"] = "earliest"
    ) -> Channel:
        """A durable subscription: `poll` returns what arrived since the last `ack`. It belongs
        to this view's principal: another principal (but system) may not poll, ack or
        re-subscribe it."""
        from .store import check_channel

        check_channel(channel)
        check_name(subscriber, "subscriber")
        if start not in ("earliest", "latest"):
            raise InvalidInput("start must be 'earliest' or 'latest'")
        owner = self.memstore.owner(channel, subscriber)
        self._gate_subscription("subscribe", channel, subscriber, owner)
        return self.memstore.subscribe(channel, subscriber, start, owner=self.principal)

    def _gate_subscription(self, op: str, channel: str, subscriber: str, owner: str | None) -> None:
        """The gate of a channel call: a subscription is its owner's (and system's)."""
        detail = f"channel={channel} subscriber={subscriber}"
        if owner is not None and self.principal not in (SYSTEM, owner):
            self._audit(op, [], outcome="denied", detail=detail)
            raise PermissionDenied(
                f"{self.principal} may not {op} subscription {subscriber!r} of channel "
                f"{channel!r}: it belongs to {owner}"
            )
        self.gate(op, Action.read, detail=detail)

    def _subscription(self, channel: str, subscriber: str) -> str:
        from .errors import NotFound
        from .store import check_channel

        check_channel(channel)
        check_name(subscriber, "subscriber")
        owner = self.memstore.owner(channel, subscriber)
        if owner is None:
            raise NotFound(f"{subscriber!r} is not subscribed to channel {channel!r}")
        return owner

    def poll(self, channel: str, subscriber: str, *, limit: int = 100) -> list[Delivery]:
        """Up to `limit` deliveries since the last `ack`, oldest first: only cubes this principal
        may read (the others are skipped, and an `ack` past them skips them for good)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput("limit must be a positive integer")
        owner = self._subscription(channel, subscriber)
        self._gate_subscription("poll", channel, subscriber, owner)  # refused before reading
        return self.memstore.poll(channel, subscriber, limit, allowed=self.readable)

    def ack(self, channel: str, subscriber: str, seq: int) -> int:
        owner = self._subscription(channel, subscriber)
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise InvalidInput("seq must be a non-negative integer")
        self._gate_subscription("ack", channel, subscriber, owner)
        return self.memstore.ack(channel, subscriber, seq)

    def channels(self) -> list[Channel]:
        """The channels; a principal other than system sees only those it subscribes to, and
        only its own subscriptions in them."""
        self.gate("channels", Action.read)
        found = self.memstore.channels()
        if self.principal == SYSTEM:
            return found
        out = []
        for ch in found:
            mine = [s for s in ch.subscribers if self.memstore.owner(ch.name, s) == self.principal]
            if mine:
                out.append(ch.model_copy(update={"subscribers": mine}))
        return out

    # local model: activation (KV cache) and parameter (LoRA) memory, and the scheduler
    @property
    def model_runtime(self) -> ModelRuntime:
        """The connection to the model process of this data dir (made on first use)."""
        parts = self._parts
        with parts.lock:
            if parts.runtime is None:
                from .model.memory import ModelRuntime

                parts.runtime = ModelRuntime(self.config.data_dir)
            return parts.runtime

    @property
    def model_memory(self) -> ModelMemory:
        """Activation and parameter memory over this MemOS's vault and model runtime: the
        component the facade's model operations gate; the system's alone (it checks no
        principal itself), so a view of another principal is refused."""
        if self.principal != SYSTEM:
            self._audit("model_memory", [], outcome="denied")
            raise PermissionDenied(
                f"{self.principal} may not use the model memory component; use the facade"
            )
        return self._models()

    def _models(self) -> ModelMemory:
        runtime = self.model_runtime
        parts = self._parts
        with parts.lock:
            if parts.memory is None:
                from .model.memory import ModelMemory

                parts.memory = ModelMemory(
                    self.vault,
                    runtime,
                    blobs=self.config.data_dir / "blobs",
                    default_vault=self.config.vault,
                )
            return parts.memory

    def _model_gate(
        self, op: str, user_id: str, vault: str | None, action: Action
    ) -> Callable[[Sequence[MemCube]], None]:
        """The gate of a model operation in `user_id`'s memory of `vault` (default: this
        MemOS's). The scope is checked now, before anything is resolved (`action`: write for
        what stores a cube, read for generation); the returned check is what ModelMemory calls
        with every cube the operation reads, once resolved and before the model process is
        reached or anything is written: `gate` (read on each cube). One audit entry either way."""
        user_id = check_name(user_id, "user_id")
        vault = check_name(vault or self.config.vault, "vault")
        try:
            self.governance.check_vault(self.principal, vault, action, user_id)
        except PermissionDenied:
            self._audit(op, [], outcome="denied", vault=vault, detail=f"user_id={user_id}")
            raise
        scope = Scope(vault=vault, user_id=user_id)

        def check(cubes: Sequence[MemCube]) -> None:
            self.gate(op, Action.read, cubes=cubes, scope=scope)

        return check

    def _model_kw(self, op: str, user_id: str, action: Action, kw: dict[str, Any]) -> None:
        """The gate's check, and who the cubes a model operation stores are made by (a caller
        other than the system cannot name someone else)."""
        kw["check"] = self._model_gate(op, user_id, kw.get("vault"), action)
        if action is Action.write and self.principal != SYSTEM:
            kw["by"] = self.principal

    def model(
        self,
        url: str | None = None,
        *,
        model: str | None = None,
        start: bool = True,
        threads: int | None = None,
        kv_budget_mb: int = 1024,
        api_key: str | None = None,
    ) -> ModelClient:
        """The local model process: the one at `url` (or `MEMOS_MODEL_URL`; ours or vLLM, with
        `api_key` or `MEMOS_MODEL_API_KEY` as its bearer token), else the one running for this
        data dir (with the token kept in `<data dir>/model/token`), else a child process started
        now (the packaged SmolLM2 unless `model` names another; it stops when this process
        ends)."""
        return self.model_runtime.connect(
            url,
            model=model,
            start=start,
            threads=threads,
            kv_budget_mb=kv_budget_mb,
            api_key=api_key,
        )

    def stop_model(self) -> bool:
        """Stop the model process of this data dir; True if one was running (system only)."""
        if self.principal != SYSTEM:
            self._audit("stop_model", [], outcome="denied")
            raise PermissionDenied(f"{self.principal} may not stop the model process")
        self._audit("stop_model", [])
        return self.model_runtime.stop()

    def chat_model(
        self, *, user_id: str | None = None, vault: str | None = None, **kw: Any
    ) -> MemOSChatModel:
        """A LangChain chat model backed by the local model process (for fine-mode extraction,
        the graphs, any chain); `kw` are `MemOSChatModel` fields (temperature, max_tokens...).
        With `user_id`, every request carries that user's memories as `chat_request` plans
        them for it (checked for this principal on each request), and the reply's
        `response_metadata["memos"]` says which it used."""
        from .model.chat import MemOSChatModel

        client = self.model()
        return MemOSChatModel(
            base_url=client.url,
            api_key=client.api_key,
            model=kw.pop("model", None),
            recall=None if user_id is None else self._recall(user_id, vault),
            **kw,
        )

    def _recall(
        self, user_id: str, vault: str | None
    ) -> Callable[[list[dict[str, str]]], ChatRequest]:
        """`chat_request` for `user_id`'s memories, as a chat model's `recall`."""
        user = check_name(user_id, "user_id")

        def recall(messages: list[dict[str, str]]) -> ChatRequest:
            return self.chat_request(messages, user_id=user, vault=vault)

        return recall

    def build_activation(
        self, cube_ids: Sequence[str | MemCube], *, user_id: str, **kw: Any
    ) -> MemCube:
        """Activation memory: the KV cache of these plaintext memories, stored as a versioned
        activation cube (`vault`, `name`, `system_prompt`, `parameter` optional)."""
        self._model_kw("build_activation", user_id, Action.write, kw)
        return self._models().build_activation(cube_ids, user_id=user_id, **kw)

    def distil(
        self, cube_ids: Sequence[str | MemCube] | None = None, *, user_id: str, **kw: Any
    ) -> MemCube:
        """Parameter memory: a LoRA adapter trained on these memories (or `tag=`), stored as a
        versioned parameter cube (`name`, `steps`, `lr`, `rank`, `progress` optional); by
        tag, only the memories this principal may read."""
        kw.pop("principal", None)  # a view's principal is its own, never an argument
        self._model_kw("distil", user_id, Action.write, kw)
        kw["readable"] = self.readable
        return self._models().distil(cube_ids, user_id=user_id, **kw)

    def generate(self, prompt: Any, *, user_id: str, **kw: Any) -> Generation:
        """Answer with the local model using `memories` (as text), `activation` (a KV cache
        cube: same greedy reply as the text, faster), `parameter` (a LoRA cube), or a
        `plan` from `mem.scheduler.plan(...)`. Naming none of these, the scheduler plans for
        the prompt (the relevant adapter, the hot KV cache, the other hits as text, among
        what this principal may read) and the reply says what it used (`activation`,
        `parameter`, `adapter`, `plaintext`, `cached_tokens`, `planned`, `notes`);
        `plan=False`: only what is named (none: the bare model). Every memory it reads (a
        plan's too) must be readable by this principal, in a scope it may read."""
        self._model_kw("generate", user_id, Action.read, kw)
        plan = self._default_plan(prompt, user_id, kw)
        return _planned(self._models().generate(prompt, user_id=user_id, **kw), plan)

    def generate_stream(self, prompt: Any, *, user_id: str, **kw: Any) -> Iterator[str]:
        """`generate`, as text pieces as they are produced (checked when called)."""
        self._model_kw("generate_stream", user_id, Action.read, kw)
        self._default_plan(prompt, user_id, kw)
        return self._models().stream(prompt, user_id=user_id, **kw)

    def chat_request(self, prompt: Any, *, user_id: str, **kw: Any) -> ChatRequest:
        """The request `generate` would send, for any OpenAI-compatible client of the model
        process (`ChatOpenAI(base_url=<model url>/v1, api_key=<token>)`): `messages` (the
        memory block first), `model` (the adapter of the parameter cube, or the base model),
        `extra_body` (the activation's KV cache), `used` (the activation and parameter cube
        ids), chosen and checked as `generate` does (same arguments, same plan by default).
        `skip_texts`: the memories to send as text with one of these as content are left out
        (turns already in the conversation), so the memory block stays the same."""
        self._model_kw("chat_request", user_id, Action.read, kw)
        plan = self._default_plan(prompt, user_id, kw)
        return _planned(self._models().chat_request(prompt, user_id=user_id, **kw), plan)

    def _default_plan(self, prompt: Any, user_id: str, kw: dict[str, Any]) -> Any:
        """The scheduler's plan for a generation that names no memories, plan or `plan=False`
        (which it turns into no plan); made with this principal's search and read filter.
        None where the caller chose."""
        if kw.get("plan") is False:
            kw["plan"] = None
            return None
        named = ("plan", "memories", "activation", "parameter")
        query = _query_of(prompt)
        if query is None or any(kw.get(n) is not None for n in named):
            return None
        system_prompt = kw.get("system_prompt")
        plan = self._sched().plan(
            query,
            user_id=user_id,
            vault=kw.get("vault"),
            search=self._plan_search,
            readable=None if self.principal == SYSTEM else self.readable,
            system_prompt=system_prompt if isinstance(system_prompt, str) else None,
        )
        kw["plan"] = plan
        return plan

    def _plan_search(self, query: str, *, user_id: str, k: int, vault: str | None) -> Any:
        """This principal's search for a generation's plan; the generation's own audit entry
        names what it reads."""
        return self._search(query, user_id, k, vault, None, None, None, None, "hybrid", None,
                            None, 0, explain=False, audit=False)[0]

    def load_parameter(self, cube_id: str, *, user_id: str | None = None) -> str:
        """Load a parameter cube's adapter into the model process; returns its model name."""
        return self._models().load_parameter(
            cube_id, user_id=user_id, check=self._cube_gate("load_parameter")
        )

    def unload_parameter(self, cube_id: str, *, user_id: str | None = None) -> bool:
        """Unload a parameter cube's adapter; requests then get the base model's outputs."""
        return self._models().unload_parameter(
            cube_id, user_id=user_id, check=self._cube_gate("unload_parameter")
        )

    def _cube_gate(self, op: str) -> Callable[[Sequence[MemCube]], None]:
        def check(cubes: Sequence[MemCube]) -> None:
            self.gate(op, Action.read, cubes=cubes)

        return check

    def _system_audit(self, op: str, **kw: Any) -> None:
        """An audit entry of the system (the scheduler's jobs are system actions)."""
        self.governance.audit(SYSTEM, op, **kw)

    @property
    def scheduler(self) -> MemScheduler:
        """The MemScheduler of this MemOS: policies, background jobs, task plans. It is the
        system's own worker (it searches, sweeps and runs jobs as the system; its proposals
        and plans name any user's memories), so a view of another principal is refused: plan
        as the system (the trusted service), then `generate(plan=...)` as the principal, which
        checks every cube of the plan."""
        if self.principal != SYSTEM:
            self._audit("scheduler", [], outcome="denied")
            raise PermissionDenied(
                f"{self.principal} may not use the scheduler (the system's own worker)"
            )
        return self._sched()

    def _sched(self) -> MemScheduler:
        models = self._models()
        system = self if self.principal == SYSTEM else self.as_principal(SYSTEM)
        parts = self._parts
        with parts.lock:
            if parts.scheduler is None:
                from .scheduler import MemScheduler

                parts.scheduler = MemScheduler(
                    self.vault.catalog,
                    models,
                    search=system.search,
                    sweep=system.sweep,
                    write_version=self.vault.write_version,
                    audit=self._system_audit,
                    vault=self.config.vault,
                )
            return parts.scheduler

    # async twins
    async def aadd(self, messages: Any, **kw: Any) -> list[MemCube]:
        return await asyncio.to_thread(self.add, messages, **kw)

    async def aadd_document(self, document: str | Path, **kw: Any) -> list[MemCube]:
        return await asyncio.to_thread(self.add_document, document, **kw)

    async def asearch(self, query: str, **kw: Any) -> list[SearchHit]:
        return await asyncio.to_thread(self.search, query, **kw)

    async def aexplain(self, query: str, **kw: Any) -> SearchResult:
        return await asyncio.to_thread(self.explain, query, **kw)

    async def aget(self, cube_id: str, **kw: Any) -> MemCube:
        return await asyncio.to_thread(self.get, cube_id, **kw)

    async def aupdate(self, cube_id: str, content: str, **kw: Any) -> MemCube:
        return await asyncio.to_thread(self.update, cube_id, content, **kw)

    async def ahistory(self, cube_id: str, **kw: Any) -> list[VersionRecord]:
        return await asyncio.to_thread(self.history, cube_id, **kw)

    async def adelete(self, cube_id: str, **kw: Any) -> MemCube:
        return await asyncio.to_thread(self.delete, cube_id, **kw)

    async def apurge(self, cube_id: str, **kw: Any) -> PurgeReceipt:
        return await asyncio.to_thread(self.purge, cube_id, **kw)

    async def alist(self, **kw: Any) -> list[MemCube]:
        return await asyncio.to_thread(self.list, **kw)

    async def astats(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.stats)

    async def apublish(self, channel: str, memory: Any, **kw: Any) -> list[Delivery]:
        return await asyncio.to_thread(self.publish, channel, memory, **kw)

    async def asubscribe(self, channel: str, subscriber: str, **kw: Any) -> Channel:
        return await asyncio.to_thread(self.subscribe, channel, subscriber, **kw)

    async def apoll(self, channel: str, subscriber: str, **kw: Any) -> list[Delivery]:
        return await asyncio.to_thread(self.poll, channel, subscriber, **kw)

    async def aack(self, channel: str, subscriber: str, seq: int) -> int:
        return await asyncio.to_thread(self.ack, channel, subscriber, seq)

    async def achannels(self) -> list[Channel]:
        return await asyncio.to_thread(self.channels)

    async def abuild_activation(self, cube_ids: Any, **kw: Any) -> MemCube:
        return await asyncio.to_thread(self.build_activation, cube_ids, **kw)

    async def adistil(self, cube_ids: Any = None, **kw: Any) -> MemCube:
        return await asyncio.to_thread(self.distil, cube_ids, **kw)

    async def agenerate(self, prompt: Any, **kw: Any) -> Generation:
        return await asyncio.to_thread(self.generate, prompt, **kw)

    async def achat_request(self, prompt: Any, **kw: Any) -> ChatRequest:
        return await asyncio.to_thread(self.chat_request, prompt, **kw)

    async def astop_model(self) -> bool:
        return await asyncio.to_thread(self.stop_model)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


__all__ = ["MemOS", "MemOSError", "PurgeReceipt"]
