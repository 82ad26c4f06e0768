"""MemVault: named repositories of cubes over the catalog, the vector index and the graph.

Write path: catalog first (pending) -> vector index + graph -> committed. `reconcile` brings
anything left pending (a crash between the steps) back in line, so nothing acknowledged is lost.

Every write (`add`, `write_version`, and the MIP loader through `prepare`) first refuses text
no store can hold (NUL, lone surrogates) in any field, then applies the vault's
`RedactionPolicy` to every stored text field, records what was masked in
`governance.redactions` and reseals the cube: whoever writes (facade, store adapter, operator,
model memory, loader) gets it without asking. See `mask_cube` for the fields.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .blobs import blob_path, is_blob_name
from .catalog import Catalog, ts
from .cube import LIVE_STATES, MAX_ID_LEN, Form, MemCube, Scope, SearchHit, State, utcnow
from .embeddings import Embedder
from .errors import ConfigError, IntegrityError, InvalidInput, NotFound, StoreError
from .graph.base import FactNode, GraphStore
from .operator import FactReading, MemOperator, Placement
from .reader import MemoryIntent, extract_entities, read_intent
from .redaction import Redaction, RedactionPolicy, redact
from .retrieval import PRESETS, RetrievalConfig, RoutedHit, Router, SearchExplain
from .vector.base import VectorIndex, VectorRecord

log = logging.getLogger(__name__)


def embed_text(cube: MemCube) -> str:
    """What gets embedded: the text, with the speaker in front when there is one."""
    speaker = cube.provenance.speaker
    return f"{speaker}: {cube.content}" if speaker else cube.content


def _fact_of(cube: MemCube, placement: Placement | None = None) -> FactNode:
    return FactNode(
        id=cube.id,
        vault=cube.scope.vault,
        user_id=cube.scope.user_id,
        session_id=cube.scope.session_id,
        agent_id=cube.scope.agent_id,
        text=cube.content[:500],
        source_kind=cube.provenance.source_kind.value,
        source_refs=cube.provenance.source_refs,
        entities=cube.organisation.entities,
        concepts=placement.concepts if placement else [],
        topic=placement.topic if placement else None,
        speaker=cube.provenance.speaker,
        state=cube.lifecycle.state.value,
        importance=cube.organisation.importance,
        valid_from=ts(cube.lifecycle.valid_from),
        valid_to=ts(cube.lifecycle.valid_to),
        created_at=ts(cube.lifecycle.created_at) or 0.0,
    )


def _bad_char(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate (U+D800..U+DFFF)"
    return None


def check_clean(value: Any, what: str) -> None:
    """InvalidInput naming the field if any string in `value` (dict keys and values, list
    items, recursively) holds NUL or a lone surrogate: no store takes them (SQLite and
    PostgreSQL refuse or mangle them, the graph rejects them), so they are refused before the
    first write."""
    stack: list[tuple[Any, str]] = [(value, what)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            bad = _bad_char(item)
            if bad:
                raise InvalidInput(f"{where} contains {bad}")
        elif isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str) and (bad := _bad_char(k)):
                    raise InvalidInput(f"a key of {where} contains {bad}")
                stack.append((v, f"{where}.{k}"))
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{where}.{i}") for i, v in enumerate(item))


def check_cube_text(cube: MemCube) -> None:
    """Every text field of `cube` (content, id, scope, provenance, tags, entities, metadata,
    ...) is storable: InvalidInput naming the field otherwise."""
    if not isinstance(cube.id, str) or not cube.id.strip() or len(cube.id) > MAX_ID_LEN:
        raise InvalidInput(f"cube id must be a non-empty string of at most {MAX_ID_LEN} "
                           "characters")
    data = cube.model_dump(mode="python")
    for field in ("id", "content", "scope", "provenance", "organisation", "metadata"):
        check_clean(data[field], field)


# top-level metadata keys that name a LangGraph store item (they repeat its scope and id,
# which are identifiers and never masked); only when the metadata has the store's shape
_STORE_ITEM_KEYS = frozenset({"namespace", "key", "value"})
_IDENTIFIER_KEYS = ("namespace", "key")


def _mask_value(value: Any, mask: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, list):
        return [_mask_value(v, mask) for v in value]
    if isinstance(value, dict):
        return {k: _mask_value(v, mask) for k, v in value.items()}
    return value


def _mask_metadata(metadata: dict[str, Any], mask: Any) -> dict[str, Any]:
    keep = _IDENTIFIER_KEYS if metadata.keys() >= _STORE_ITEM_KEYS else ()
    return {k: v if k in keep else _mask_value(v, mask) for k, v in metadata.items()}


def mask_cube(cube: MemCube, policy: RedactionPolicy) -> list[Redaction]:
    """Apply `policy` to `cube` in place and return what this pass masked (kinds, counts).

    Masked: the content and every metadata string (recursively) of plaintext cubes; for every
    form the tags, topic, concept, speaker and source refs (message ids). Entities are re-read
    from the masked content when it changed, and any entity that still holds personal data
    is dropped, so none reaches the graph. Not masked: ids and the scope (identifiers), the
    principals in provenance, and the content and metadata of activation / parameter cubes
    (blob names, fingerprints and hashes the model memory made)."""
    counts: dict[str, int] = {}

    def mask(text: str) -> str:
        out, hits = redact(text, policy)
        for h in hits:
            counts[h.kind] = counts.get(h.kind, 0) + h.count
        return out

    content_changed = False
    if cube.form is Form.plaintext:
        masked = mask(cube.content)
        content_changed = masked != cube.content
        cube.content = masked
        cube.metadata = _mask_metadata(cube.metadata, mask)
    prov, org = cube.provenance, cube.organisation
    if prov.speaker is not None:
        prov.speaker = mask(prov.speaker)
    prov.source_refs = [mask(r) for r in prov.source_refs]
    org.tags = list(dict.fromkeys(mask(t) for t in org.tags))
    org.topic = None if org.topic is None else mask(org.topic)
    org.concept = None if org.concept is None else mask(org.concept)
    entities = org.entities
    if content_changed:
        entities = [*([prov.speaker] if prov.speaker else []), *extract_entities(cube.content)]
    tokens = {k.upper() for k in ("email", "phone", "iban", "card", *policy.patterns)}
    org.entities = [e for e in dict.fromkeys(entities)
                    if e.strip("[]") not in tokens and not redact(e, policy)[1]]
    return [Redaction(kind=k, count=n, policy=policy.name) for k, n in counts.items()]


def _merged(old: list[Redaction], new: list[Redaction]) -> list[Redaction]:
    """What was masked over a cube's life: counts summed per (kind, policy)."""
    total: dict[tuple[str, str], int] = {}
    for r in [*old, *new]:
        total[(r.kind, r.policy)] = total.get((r.kind, r.policy), 0) + r.count
    return [Redaction(kind=k, count=n, policy=p) for (k, p), n in total.items()]


def _vector_meta(cube: MemCube) -> dict[str, str | int | float | bool]:
    meta: dict[str, str | int | float | bool] = {
        "created_at": ts(cube.lifecycle.created_at) or 0.0,
        "source_kind": cube.provenance.source_kind.value,
    }
    if cube.scope.session_id:
        meta["session_id"] = cube.scope.session_id
    if cube.scope.agent_id:
        meta["agent_id"] = cube.scope.agent_id
    if cube.lifecycle.valid_from:
        meta["valid_from"] = ts(cube.lifecycle.valid_from) or 0.0
    return meta


class PurgeReport(BaseModel):
    """What `MemVault.purge` removed: version rows, vectors, graph facts, blob files."""

    versions: int
    vectors: int
    graph_facts: int
    blobs: int


class MemVault:
    """All cubes of one data directory, in whichever named vaults they belong to."""

    def __init__(
        self,
        catalog: Catalog,
        index: VectorIndex,
        graph: GraphStore,
        embedder: Embedder,
        retrieval: RetrievalConfig | None = None,
        llm: Any = None,
    ) -> None:
        self.catalog = catalog
        self.index = index
        self.graph = graph
        self.embedder = embedder
        self._pool: ThreadPoolExecutor | None = None  # the embedding thread of `add`
        self._pool_lock = threading.Lock()
        self._check_embedder()
        self.operator = MemOperator(
            catalog, index, graph, scope_index=lambda v, u: self.router.scope_index(v, u),
            write_version=self.write_version, llm=llm,
        )
        self.router = Router(catalog, index, graph, embedder, retrieval,
                             settle=self.operator.wait)
        self.llm = llm

    @property
    def llm(self) -> Any:
        """The LangChain chat model (or None) that reads query intents and names topics."""
        return self._llm

    @llm.setter
    def llm(self, llm: Any) -> None:
        self._llm = llm
        self.operator.llm = llm

    def _check_embedder(self) -> None:
        # the first process to open a new catalog names its embedder; the others check it
        known = self.catalog.meta_once("embedder", self.embedder.name)
        if known != self.embedder.name:
            raise ConfigError(
                f"this data dir was indexed with embedder {known!r}; opening it with "
                f"{self.embedder.name!r} would mix vector spaces (pass embedder={known!r})"
            )

    # writes
    def redaction_policy(self, vault: str) -> RedactionPolicy | None:
        return self.catalog.settings.get(RedactionPolicy, vault, legacy_key=f"redaction:{vault}")

    def prepare(self, cubes: Sequence[MemCube]) -> None:
        """What every write does first, in place: refuse unstorable text in any field of any
        cube (InvalidInput, before anything is written), apply each cube's vault redaction
        policy (recorded in `governance.redactions`), reseal."""
        for c in cubes:
            check_cube_text(c)
        policies: dict[str, RedactionPolicy | None] = {}
        for c in cubes:
            vault = c.scope.vault
            if vault not in policies:
                policies[vault] = self.redaction_policy(vault)
            policy = policies[vault]
            if policy is not None:
                found = mask_cube(c, policy)
                if found:
                    c.governance.redactions = _merged(c.governance.redactions, found)
            c.seal()

    def add(self, cubes: Sequence[MemCube], created_by: str, organise: bool = True) -> None:
        """Store new cubes: check and redact them (`prepare`), embed, place them (concepts,
        topic), catch the facts they supersede, write the catalog (pending), then the index
        and graph (committed). With `organise` false (or for keyed store items) nothing is
        superseded."""
        self.prepare(cubes)
        vectors, readings = self._embed_and_read(cubes)
        placements = self.operator.annotate(cubes, vectors, readings)
        replaced = self.operator.supersede_candidates(cubes, vectors) if organise else []
        for new, old_id, _ in replaced:
            if old_id not in new.provenance.derived_from:
                new.provenance.derived_from.append(old_id)
        self.catalog.insert(cubes, changed_by=created_by)
        self.sync(cubes, vectors=vectors, placements=placements, fresh=True)
        for new, old_id, reason in replaced:
            try:
                self.operator.supersede(new, old_id, reason, created_by)
            except Exception as exc:  # the new fact is stored; the old one stays current
                log.warning("could not supersede %s by %s: %s", old_id, new.id, exc)

    def write_version(self, cube: MemCube, op: str, changed_by: str, expected_version: int) -> None:
        """Store `cube` as its next version (checked and redacted first, see `prepare`)."""
        self.prepare([cube])
        self.catalog.write_version(cube, op, changed_by, expected_version)
        self.sync([cube])

    def _embed_and_read(
        self, cubes: Sequence[MemCube]
    ) -> tuple[dict[str, list[float]], dict[str, FactReading]]:
        """`_embed` on the vault's embedding thread while this one reads the texts
        (`operator.read_facts`, pure Python: concepts, entities, times): the embedder leaves
        the GIL while it runs, so the reading costs little wall time. Nothing is set on the
        cubes here: an embedding failure still leaves them as they were."""
        if not any(c.form is Form.plaintext and c.is_live() for c in cubes):
            return {}, self.operator.read_facts(cubes)
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memos-embed")
            embedding = self._pool.submit(self._embed, cubes)
        try:
            readings = self.operator.read_facts(cubes)
        finally:
            vectors = embedding.result()  # its StoreError first: nothing was stored
        return vectors, readings

    def _embed(self, cubes: Sequence[MemCube]) -> dict[str, list[float]]:
        live = [c for c in cubes if c.form is Form.plaintext and c.is_live()]
        if not live:
            return {}
        try:
            vectors = self.embedder.embed_documents([embed_text(c) for c in live])
        except Exception as exc:
            raise StoreError(f"embedding failed; nothing was stored: {exc}") from exc
        return {c.id: v for c, v in zip(live, vectors, strict=True)}

    def sync(
        self,
        cubes: Sequence[MemCube],
        vectors: dict[str, list[float]] | None = None,
        placements: dict[str, Placement] | None = None,
        fresh: bool = False,
    ) -> None:
        """Make the index and graph agree with these catalog rows, then mark them committed.
        Active plaintext cubes are (re-)embedded unless `vectors` has them; superseded ones keep
        their vector (for `as_of` searches) and their graph node (for lineage)."""
        live = [c for c in cubes if c.form is Form.plaintext and c.is_live()]
        kept = [c for c in cubes
                if c.form is Form.plaintext and c.lifecycle.state is State.superseded]
        keep_ids = {c.id for c in live} | {c.id for c in kept}
        gone = [c for c in cubes if c.id not in keep_ids]
        vectors = dict(vectors or {})
        try:
            missing = [c for c in live if c.id not in vectors]
            if missing:
                vectors.update(self._embed(missing))
            if placements is None:
                placements = self.operator.annotate(live + kept, vectors)
            self._write_indexes(live, kept, gone, vectors, placements, fresh)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(
                f"indexing failed; {len(cubes)} cube(s) are kept in the catalog as pending "
                f"and will be re-indexed when the vault is next opened: {exc}"
            ) from exc
        self.catalog.mark_committed(
            [c.id for c in cubes], {c.id: c.lifecycle.version for c in cubes}
        )
        self.router.on_write(cubes)
        placed = {cid: p for cid, p in placements.items() if cid in {c.id for c in live}}
        if placed:
            facts = [_fact_of(c, placed[c.id]) for c in live if c.id in placed] if fresh else []
            self.operator.organise_later(live, placed, facts)

    def _write_indexes(
        self,
        live: list[MemCube],
        kept: list[MemCube],
        gone: list[MemCube],
        vectors: dict[str, list[float]],
        placements: dict[str, Placement],
        fresh: bool,
    ) -> None:
        """Vectors of the live cubes, graph facts of the live and kept ones, neither of the
        gone ones."""
        if live:
            by_scope: dict[tuple[str, str], list[VectorRecord]] = defaultdict(list)
            for c in live:
                by_scope[(c.scope.vault, c.scope.user_id)].append(
                    VectorRecord(id=c.id, embedding=vectors[c.id], metadata=_vector_meta(c))
                )
            for (vault, user), recs in by_scope.items():
                self.index.upsert(vault, user, recs)
        if live or kept:
            if fresh:  # new facts: concepts and topic are linked by the operator
                self.graph.upsert_facts([_fact_of(c) for c in live + kept], fresh=True)
            else:
                self.graph.upsert_facts([_fact_of(c, placements.get(c.id)) for c in live + kept])
        if gone:
            for (vault, user), ids in _ids_by_scope(gone).items():
                self.index.delete(vault, user, ids)
            self.graph.delete_facts([c.id for c in gone])

    def reconcile(self, batch: int = 500) -> int:
        """Re-index every cube left pending; returns how many were repaired. A batch that
        still fails stays pending (and is logged) so opening the vault never fails on it."""
        done = 0
        failed: set[str] = set()
        while pending := [c for c in self.catalog.pending(limit=batch + len(failed))
                          if c.id not in failed][:batch]:
            try:
                self.sync(pending)
                done += len(pending)
            except StoreError as exc:
                log.error("could not re-index %d pending cube(s): %s", len(pending), exc)
                failed.update(c.id for c in pending)
        return done

    def purge(self, cube: MemCube, blobs: Path | None = None) -> PurgeReport:
        """Erase a cube everywhere: its vector, its graph fact, every version in the catalog
        and, under the blob root `blobs`, the KV / LoRA files of its versions (a KV file
        another active cache still uses stays); returns what went."""
        vault, user = cube.scope.vault, cube.scope.user_id
        vectors = len(self.index.embeddings(vault, user, [cube.id]))
        self.index.delete(vault, user, [cube.id])
        facts = self.graph.counts(vault, user).get("facts", 0)
        self.graph.delete_facts([cube.id])
        facts -= self.graph.counts(vault, user).get("facts", 0)
        names = {cube.content} | {v.cube.content for v in self.catalog.history(cube.id)}
        versions = self.catalog.purge(cube.id)
        self.router.on_purge(cube)
        removed = 0 if blobs is None else self._drop_blobs(cube, names, blobs)
        return PurgeReport(versions=versions, vectors=vectors, graph_facts=min(1, max(0, facts)),
                           blobs=removed)

    def _drop_blobs(self, cube: MemCube, names: set[str], root: Path) -> int:
        """Remove the blob files of a purged activation / parameter cube; how many went."""
        if cube.form not in (Form.activation, Form.parameter):
            return 0
        if cube.form is Form.activation:
            names -= {c.content for c in self.catalog.active_cubes(form=Form.activation)}
        removed = 0
        for name in sorted(n for n in names if is_blob_name(cube.form, n)):
            try:
                path = blob_path(root, cube.form, name)
            except InvalidInput as exc:  # resolves outside the blob root: left alone
                log.warning("not removing blob %r: %s", name, exc)
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.is_file() or path.is_symlink():
                path.unlink()  # a link (pointing inside the blob root) goes, never its target
            else:
                continue
            removed += 1
            if cube.form is Form.parameter and not any(path.parent.iterdir()):
                path.parent.rmdir()  # lora/<cube id>/, once its last version is gone
        return removed

    # reads
    def get(
        self,
        cube_id: str,
        scope_user: str | None = None,
        *,
        expired: bool = False,
        now: datetime | None = None,
    ) -> MemCube:
        """One cube by id (of `scope_user` if given). A cube still active or frozen but past
        its TTL is NotFound ("expired") unless `expired` (purge, history, delete need it):
        TTL holds on every read, not only once the sweep has marked it expired."""
        if not isinstance(cube_id, str) or not cube_id:
            raise InvalidInput("cube id must be a non-empty string")
        if _bad_char(cube_id) or len(cube_id) > MAX_ID_LEN:
            raise NotFound(f"no cube with id {cube_id!r}")
        cube = self.catalog.get(cube_id)
        if scope_user is not None and cube.scope.user_id != scope_user:
            raise NotFound(f"no cube with id {cube_id!r}")  # never reveal another user's ids
        if (not expired and cube.lifecycle.state in LIVE_STATES
                and not cube.is_live(now or utcnow())):
            raise NotFound(f"cube {cube_id!r} expired at {cube.lifecycle.expires_at}")
        if not cube.intact:
            raise IntegrityError(f"cube {cube_id} does not match its fingerprint: it was altered")
        return cube

    def search(
        self,
        query: str,
        scope: Scope,
        k: int,
        *,
        tags: Sequence[str] | None = None,
        min_score: float | None = None,
        now: datetime | None = None,
    ) -> list[SearchHit]:
        """Cosine similarity alone: the `dense` preset of `route`."""
        hits, _ = self.route(query, scope, k, tags=tags, min_score=min_score, now=now,
                             routes=PRESETS["dense"])
        return list(hits)

    def route(
        self,
        query: str,
        scope: Scope,
        k: int,
        *,
        routes: Sequence[str] | str | None = None,
        tags: Sequence[str] | None = None,
        min_score: float | None = None,
        as_of: datetime | None = None,
        window: int = 0,
        explain: bool = False,
        now: datetime | None = None,
        intent: MemoryIntent | None = None,
    ) -> tuple[list[RoutedHit], SearchExplain | None]:
        """Search over `routes` (a preset name or route names, see `memos_agents.retrieval`;
        default hybrid: the query's intent routed to dense, keyword and graph candidates,
        fused). Returns the hits and, if asked, the explanation."""
        now = now or utcnow()
        if intent is None:
            intent = (read_intent(query, now, self.llm) if self.router.reads_intent(routes)
                      else MemoryIntent(query=query))
        hits, ex = self.router.search(
            query, scope, k, intent=intent, routes=routes, tags=tags, min_score=min_score,
            as_of=as_of, window=window, explain=explain, now=now,
        )
        self.catalog.touch([h.cube.id for h in hits], now)
        for h in hits:
            h.cube.lifecycle.access_count += 1
            h.cube.lifecycle.last_accessed_at = now
        return hits, ex

    def stats(self) -> dict[str, Any]:
        out = self.catalog.stats()
        out["vectors"] = self.index.count()
        out["graph"] = self.graph.counts()
        out["embedder"] = self.embedder.name
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.router.close()
        self.operator.close()
        self.index.close()
        self.graph.close()
        self.catalog.close()


def _ids_by_scope(cubes: Sequence[MemCube]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for c in cubes:
        out[(c.scope.vault, c.scope.user_id)].append(c.id)
    return out
