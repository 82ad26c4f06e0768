"""Task-aligned retrieval: a query's `MemoryIntent` routed to the graph, the dense index and
BM25, fused with time filters, recency and importance, every stage visible in `explain`.

    intent   MemReader.read_intent: entities, concepts, time range, answer kind
    dense    Chroma, the scope's own collection (top `candidates`)
    keyword  BM25 (bm25s) over "speaker: text", and over each turn with its session neighbours
    graph    entities -> facts that mention them; concepts -> facts about them, and one hop
             over RELATED / BROADER concepts
    fuse     each signal scaled to [0, 1] over the candidate pool, weighted and summed; a turn
             also gains from its session neighbours' scores (an answer often follows the
             question that names its subject); entity, time, recency and importance terms
    rerank   optional: any callable (query, texts) -> scores, e.g. a cross-encoder

The keyword index and the per-scope bookkeeping (`ScopeIndex`) live in memory, per
(vault, user): built from the catalog on first use, kept current by the vault's own writes,
reloaded when another process wrote to the scope. Nothing here ever reads outside the one
(vault, user) scope it was built for.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .cube import MemCube, Scope, SearchHit, State
from .graph.base import norm_entity
from .reader import MemoryIntent, TimeRange, keyword_tokens

if TYPE_CHECKING:
    from .vault import MemVault

log = logging.getLogger(__name__)

SIGNATURE_TTL = 1.0  # seconds between checks that no other process changed a scope
LIVE = (State.active.value, State.frozen.value)
INDEXED = (*LIVE, State.superseded.value)


class RetrievalConfig(BaseModel):
    """Weights and sizes of the router. Defaults were set on the LoCoMo dev subset only."""

    model_config = ConfigDict(extra="forbid")

    candidates: int = Field(default=100, ge=1, description="per route, before fusion")
    w_dense: float = 1.0
    w_keyword: float = 1.0
    w_context: float = 1.0
    w_window: float = 0.5
    w_graph: float = 0.6
    w_prev_dense: float = 0.3
    neighbour: float = 0.7
    w_entity: float = 0.5
    w_time: float = 0.5
    w_recency: float = 0.0
    w_recency_asked: float = 0.3
    w_importance: float = 0.0
    context_turns: int = Field(default=1, ge=0, description="neighbours in the context index")
    window_turns: int = Field(default=3, ge=0, description="neighbours in the window index")
    time_filter: Literal["soft", "hard", "auto"] = "auto"
    fusion: Literal["weighted", "rrf"] = "weighted"
    rrf_k: int = 60
    bm25_k1: float = 0.9
    bm25_b: float = 0.4
    explain_top: int = Field(default=20, ge=1, description="candidates shown per stage")
    graph_fanout: int = Field(default=500, ge=1,
                              description="graph routes skip names / concepts on more facts")


# ---------------------------------------------------------------------------------------------
# results


class StageCandidate(BaseModel):
    id: str
    score: float
    rank: int


class Stage(BaseModel):
    """One stage of routing: what it found (the top `explain_top`) and what it cost."""

    name: str
    took_ms: float
    total: int = 0
    candidates: list[StageCandidate] = Field(default_factory=list)
    detail: dict[str, Any] = Field(default_factory=dict)


class FusedScore(BaseModel):
    id: str
    rank: int
    score: float
    parts: dict[str, float]
    text: str = ""


class SearchExplain(BaseModel):
    """How a search found what it returned."""

    intent: MemoryIntent
    stages: list[Stage] = Field(default_factory=list)
    fused: list[FusedScore] = Field(default_factory=list)
    time_range: TimeRange | None = None
    time_filter: str = "none"
    dropped: dict[str, int] = Field(default_factory=dict)
    config: RetrievalConfig
    took_ms: float = 0.0


class RoutedHit(SearchHit):
    """A hit of the router: `score` is the fused relevance in (0, 1], `dense` the cosine
    similarity (None when the dense route did not rank it), `context` the session turns
    around it when asked for (`window=`); those are context, not hits."""

    fused: float = 0.0
    dense: float | None = None
    routes: list[str] = Field(default_factory=list)
    context: list[MemCube] = Field(default_factory=list)


class SearchResult(BaseModel):
    """`search(..., explain=True)`: the hits and how they were found."""

    hits: list[SearchHit]
    explain: SearchExplain

    def __iter__(self) -> Any:  # type: ignore[override]
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i: int) -> SearchHit:
        return self.hits[i]


# ---------------------------------------------------------------------------------------------
# the per-scope index: BM25 and the facts' bookkeeping


@dataclass(slots=True)
class Doc:
    id: str
    session: str | None
    created_at: float
    valid_from: float
    valid_to: float | None
    expires_at: float | None
    speaker: str | None
    entities: frozenset[str]
    importance: float
    state: str
    keyed: bool
    tokens: tuple[str, ...]
    content_hash: int
    alive: bool = True


def _doc_of(cube: MemCube) -> Doc:
    speaker = cube.provenance.speaker
    text = f"{speaker}: {cube.content}" if speaker else cube.content
    lc = cube.lifecycle
    return Doc(
        id=cube.id,
        session=cube.scope.session_id,
        created_at=lc.created_at.timestamp(),
        valid_from=(lc.valid_from or lc.created_at).timestamp(),
        valid_to=lc.valid_to.timestamp() if lc.valid_to else None,
        expires_at=lc.expires_at.timestamp() if lc.expires_at else None,
        speaker=norm_entity(speaker) if speaker else None,
        entities=frozenset(n for n in map(norm_entity, cube.organisation.entities) if n),
        importance=cube.organisation.importance,
        state=lc.state.value,
        keyed="key" in cube.metadata,
        tokens=tuple(keyword_tokens(text)),
        content_hash=hash((speaker or "", " ".join(cube.content.split()).casefold())),
    )


def _doc_of_row(row: Any) -> Doc:
    data = json.loads(row.data)
    prov = data.get("provenance") or {}
    org = data.get("organisation") or {}
    lc = data.get("lifecycle") or {}
    speaker = prov.get("speaker")
    content = data.get("content", "")
    text = f"{speaker}: {content}" if speaker else content
    valid_to = lc.get("valid_to")
    return Doc(
        id=row.id,
        session=row.session_id,
        created_at=row.created_at,
        valid_from=row.valid_from if row.valid_from is not None else row.created_at,
        valid_to=datetime.fromisoformat(valid_to).timestamp() if valid_to else None,
        expires_at=row.expires_at,
        speaker=norm_entity(speaker) if speaker else None,
        entities=frozenset(n for n in map(norm_entity, org.get("entities") or ()) if n),
        importance=row.importance,
        state=row.state,
        keyed="key" in (data.get("metadata") or {}),
        tokens=tuple(keyword_tokens(text)),
        content_hash=hash((speaker or "", " ".join(content.split()).casefold())),
    )


class _BM25Segment:
    """bm25s over a fixed list of token lists (lucene BM25)."""

    def __init__(self, docs: list[Sequence[str]], k1: float, b: float) -> None:
        import bm25s

        self.n = len(docs)
        self.k1, self.b = k1, b
        self.df: Counter[str] = Counter()
        total = 0
        for toks in docs:
            self.df.update(set(toks))
            total += len(toks)
        self.avgdl = total / self.n if self.n else 1.0
        self.model = None
        if self.n:
            vocab: dict[str, int] = {"": 0}
            ids = [[vocab.setdefault(t, len(vocab)) for t in toks] or [0] for toks in docs]
            self.model = bm25s.BM25(k1=k1, b=b, method="lucene")
            self.model.index((ids, vocab), show_progress=False)
            self.vocab = vocab

    def scores(self, query: Sequence[str]) -> np.ndarray:
        if self.model is None:
            return np.zeros(0, dtype=np.float32)
        ids = [self.vocab[t] for t in query if t in self.vocab]
        if not ids:
            return np.zeros(self.n, dtype=np.float32)
        return self.model.get_scores(ids)

    def idf(self, token: str, n_total: int, df_extra: int) -> float:
        df = self.df.get(token, 0) + df_extra
        return math.log(1 + (n_total - df + 0.5) / (df + 0.5))


class ScopeIndex:
    """The keyword index and bookkeeping of one (vault, user) scope.

    Docs are kept in arrival order; `sessions` orders each session's docs in time (the
    neighbours of a turn). BM25 has a main segment (bm25s) and a small tail of docs added since
    it was built, scored with the same formula and the main segment's statistics; the main
    segment is rebuilt when the tail grows past a quarter of it."""

    def __init__(self, vault: str, user_id: str, config: RetrievalConfig) -> None:
        self.vault, self.user_id, self.config = vault, user_id, config
        self.docs: list[Doc] = []
        self.pos: dict[str, int] = {}
        self.sessions: dict[str | None, list[int]] = {}
        self.seq_pos: dict[int, int] = {}
        self.by_hash: dict[int, list[int]] = {}
        self.entity_names: Counter[str] = Counter()
        self.lock = threading.RLock()
        self.signature: tuple[int, float] | None = None
        self.checked_at = 0.0
        self.own_writes = False
        self._segments: dict[str, _BM25Segment] | None = None
        self._main_n = 0
        self._version = 0
        self._arrays: tuple[int, np.ndarray, np.ndarray] | None = None
        self._tails: dict[str, tuple[int, _BM25Tail]] = {}

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(dead mask, valid_from) over all docs, cached until the docs change."""
        if self._arrays is None or self._arrays[0] != self._version:
            n = len(self.docs)
            dead = np.fromiter((not d.alive for d in self.docs), dtype=bool, count=n)
            times = np.fromiter((d.valid_from for d in self.docs), dtype=np.float64, count=n)
            self._arrays = (self._version, dead, times)
        return self._arrays[1], self._arrays[2]

    # building
    def load(self, docs: Sequence[Doc]) -> None:
        with self.lock:
            self.docs, self.pos, self.sessions, self.by_hash = [], {}, {}, {}
            self.seq_pos = {}
            self.entity_names = Counter()
            self._segments, self._main_n = None, 0
            for d in sorted(docs, key=lambda d: (d.created_at, d.id)):
                self._append(d)

    def _append(self, d: Doc) -> None:
        self._version += 1
        i = len(self.docs)
        self.docs.append(d)
        self.pos[d.id] = i
        seq = self.sessions.setdefault(d.session, [])
        if seq and self.docs[seq[-1]].created_at > d.created_at:
            seq.append(i)
            seq.sort(key=lambda j: (self.docs[j].created_at, self.docs[j].id))
            self.seq_pos.update((j, p) for p, j in enumerate(seq))
        else:
            self.seq_pos[i] = len(seq)
            seq.append(i)
        self.by_hash.setdefault(d.content_hash, []).append(i)
        self.entity_names.update(d.entities)
        if d.speaker:
            self.entity_names[d.speaker] += 1

    def upsert(self, docs: Sequence[Doc]) -> None:
        """Apply the vault's own writes (new cubes, new versions, state changes)."""
        with self.lock:
            for d in docs:
                i = self.pos.get(d.id)
                if i is None:
                    if d.state in INDEXED:
                        self._append(d)
                    continue
                old = self.docs[i]
                if old.tokens != d.tokens or old.session != d.session:
                    # content changed: retire the old entry, append the new one
                    old.alive = False
                    self._version += 1
                    del self.pos[d.id]
                    if d.state in INDEXED:
                        self._append(d)
                    if i < self._main_n:
                        self._segments = None  # stale statistics: rebuild on next search
                else:
                    d.alive = d.state in INDEXED
                    self.docs[i] = d
            self._version += 1
            self.own_writes = True

    def remove(self, ids: Sequence[str]) -> None:
        with self.lock:
            for cid in ids:
                i = self.pos.pop(cid, None)
                if i is not None:
                    self.docs[i].alive = False
            self._version += 1
            self.own_writes = True

    # neighbours
    def _seat(self, i: int) -> tuple[list[int], int]:
        """Doc `i`'s session (in time order) and its place there; ([], -1) if it has none."""
        seq = self.sessions.get(self.docs[i].session) or []
        at = self.seq_pos.get(i)
        if at is None or at >= len(seq) or seq[at] != i:
            return [], -1
        return seq, at

    def neighbours(self, i: int, before: int, after: int) -> list[int]:
        seq, at = self._seat(i)
        if at < 0:
            return []
        lo, hi = max(0, at - before), min(len(seq), at + after + 1)
        return [j for j in seq[lo:hi] if j != i and self.docs[j].alive]

    def adjacent(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """For each row, its live previous and next turn in the session (-1: none)."""
        prev = np.full(len(rows), -1, dtype=np.int64)
        nxt = np.full(len(rows), -1, dtype=np.int64)
        docs = self.docs
        for j, i in enumerate(rows):
            seq, at = self._seat(i)
            if at < 0:
                continue
            if at > 0 and docs[seq[at - 1]].alive:
                prev[j] = seq[at - 1]
            if at + 1 < len(seq) and docs[seq[at + 1]].alive:
                nxt[j] = seq[at + 1]
        return prev, nxt

    # BM25
    def _context_tokens(self, i: int, before: int, after: int) -> list[str]:
        toks = list(self.docs[i].tokens)
        for j in self.neighbours(i, before, after):
            toks.extend(self.docs[j].tokens)
        return toks

    def _ensure_segments(self) -> None:
        n = len(self.docs)
        tail = n - self._main_n
        if self._segments is not None and (tail == 0 or tail < max(500, self._main_n // 4)):
            return
        cfg = self.config
        alive = [i for i in range(n) if self.docs[i].alive]
        if len(alive) < n * 0.8 and n > 1000:  # compact after many retirements
            self.load([self.docs[i] for i in alive])
            n = len(self.docs)
        self._segments = {
            "keyword": _BM25Segment([d.tokens for d in self.docs], cfg.bm25_k1, cfg.bm25_b),
            "context": _BM25Segment(
                [self._context_tokens(i, cfg.context_turns, cfg.context_turns) for i in range(n)],
                cfg.bm25_k1,
                cfg.bm25_b,
            ),
            "window": _BM25Segment(
                [self._context_tokens(i, cfg.window_turns, cfg.window_turns) for i in range(n)],
                cfg.bm25_k1,
                cfg.bm25_b,
            ),
        }
        self._main_n = n

    def keyword_scores(self, query: Sequence[str]) -> dict[str, np.ndarray]:
        """BM25 scores of every doc (dead ones 0) for each keyword index."""
        with self.lock:
            self._ensure_segments()
            assert self._segments is not None
            n = len(self.docs)
            out = {}
            cfg = self.config
            spans = {"keyword": (0, 0), "context": (cfg.context_turns, cfg.context_turns),
                     "window": (cfg.window_turns, cfg.window_turns)}
            for name, seg in self._segments.items():
                scores = np.zeros(n, dtype=np.float32)
                if seg.n:
                    scores[: seg.n] = seg.scores(query)
                if n > seg.n:  # the tail: same formula, main statistics
                    scores[seg.n :] = self._tail(name, seg, spans[name]).scores(query, n)
                out[name] = scores
            dead, _ = self.arrays()
            for s in out.values():
                s[dead] = 0.0
            return out

    def _tail(self, name: str, seg: _BM25Segment, span: tuple[int, int]) -> _BM25Tail:
        """The tail index of one segment, rebuilt only when the docs have changed."""
        cached = self._tails.get(name)
        if cached is None or cached[0] != self._version or cached[1].seg is not seg:
            before, after = span
            docs = [self._context_tokens(i, before, after) for i in range(seg.n, len(self.docs))]
            cached = self._tails[name] = (self._version, _BM25Tail(seg, docs))
        return cached[1]

    def doc_freq(self) -> Counter[str]:
        """Keyword document frequencies of the main BM25 segment (stems)."""
        if self._segments is None:
            self._ensure_segments()
        assert self._segments is not None
        return self._segments["keyword"].df

    def known_entities(self, words: Sequence[str]) -> list[str]:
        """Which of these (normalised) names are entities of this scope."""
        return [w for w in words if w in self.entity_names]


class _BM25Tail:
    """Docs added since `seg` was built, as an inverted index: Lucene BM25 with `seg`'s
    statistics plus theirs, scored per query term with numpy."""

    def __init__(self, seg: _BM25Segment, docs: list[list[str]]) -> None:
        self.seg = seg
        self.n = len(docs)
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for j, toks in enumerate(docs):
            for t, c in Counter(toks).items():
                ids, tfs = postings.setdefault(t, ([], []))
                ids.append(j)
                tfs.append(c)
        self.postings = {
            t: (np.array(ids, dtype=np.int64), np.array(tfs, dtype=np.float64))
            for t, (ids, tfs) in postings.items()
        }
        lengths = np.array([len(t) for t in docs], dtype=np.float64)
        avgdl = (seg.avgdl * seg.n + lengths.sum()) / max(1, seg.n + self.n)
        self.norm = seg.k1 * (1 - seg.b + seg.b * lengths / avgdl)

    def scores(self, query: Sequence[str], n_total: int) -> np.ndarray:
        out = np.zeros(self.n, dtype=np.float64)
        for t in dict.fromkeys(query):
            if (p := self.postings.get(t)) is None:
                continue
            ids, tf = p
            out[ids] += self.seg.idf(t, n_total, len(ids)) * tf / (tf + self.norm[ids])
        return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the router


class Router:
    """Routes queries of one vault (all its scopes) and keeps their `ScopeIndex`es."""

    def __init__(self, vault: MemVault, config: RetrievalConfig | None = None) -> None:
        self.vault = vault
        self.config = config or RetrievalConfig()
        self._scopes: dict[tuple[str, str], ScopeIndex] = {}
        self._lock = threading.Lock()
        self.reranker: Callable[[str, list[str]], Sequence[float]] | None = None

    # the scope cache
    def scope_index(self, vault: str, user_id: str) -> ScopeIndex:
        key = (vault, user_id)
        with self._lock:
            idx = self._scopes.get(key)
            if idx is None:
                idx = self._scopes[key] = ScopeIndex(vault, user_id, self.config)
        with idx.lock:
            now = time.monotonic()
            if idx.signature is None or now - idx.checked_at > SIGNATURE_TTL:
                sig = self._signature(vault, user_id)
                if idx.signature is None or (sig != idx.signature and not idx.own_writes):
                    idx.load(self._load_docs(vault, user_id))
                idx.signature, idx.checked_at, idx.own_writes = sig, now, False
        return idx

    def dense_config(self) -> RetrievalConfig:
        """This router's config with every route but the dense one switched off."""
        return self.config.model_copy(update={
            "w_keyword": 0.0, "w_context": 0.0, "w_window": 0.0, "w_graph": 0.0,
            "w_prev_dense": 0.0, "neighbour": 0.0, "w_entity": 0.0, "w_time": 0.0,
            "w_recency": 0.0, "w_recency_asked": 0.0, "w_importance": 0.0,
        })

    def loaded(self, vault: str, user_id: str) -> ScopeIndex | None:
        return self._scopes.get((vault, user_id))

    def _signature(self, vault: str, user_id: str) -> tuple[int, float]:
        from sqlalchemy import func, select

        from .catalog import cubes_t

        q = select(func.count(), func.max(cubes_t.c.updated_at)).where(
            cubes_t.c.vault == vault, cubes_t.c.user_id == user_id
        )
        with self.vault.catalog.engine.connect() as conn:
            n, t = conn.execute(q).one()
        return int(n), float(t or 0.0)

    def _load_docs(self, vault: str, user_id: str) -> list[Doc]:
        from sqlalchemy import select

        from .catalog import cubes_t

        c = cubes_t.c
        q = select(
            c.id, c.session_id, c.state, c.created_at, c.valid_from, c.importance,
            c.expires_at, c.data,
        ).where(
            c.vault == vault,
            c.user_id == user_id,
            c.form == "plaintext",
            c.state.in_(list(INDEXED)),
        )
        with self.vault.catalog.engine.connect() as conn:
            return [_doc_of_row(r) for r in conn.execute(q)]

    def on_write(self, cubes: Sequence[MemCube]) -> None:
        """The vault wrote these cubes: keep loaded scope indexes current."""
        by_scope: dict[tuple[str, str], list[MemCube]] = {}
        for c in cubes:
            by_scope.setdefault((c.scope.vault, c.scope.user_id), []).append(c)
        for (vault, user), group in by_scope.items():
            idx = self._scopes.get((vault, user))
            if idx is not None:
                idx.upsert([_doc_of(c) for c in group if c.form.value == "plaintext"])

    def on_purge(self, cube: MemCube) -> None:
        idx = self._scopes.get((cube.scope.vault, cube.scope.user_id))
        if idx is not None:
            idx.remove([cube.id])

    # routing
    def search(
        self,
        query: str,
        scope: Scope,
        k: int,
        *,
        intent: MemoryIntent,
        tags: Sequence[str] | None = None,
        min_score: float | None = None,
        as_of: datetime | None = None,
        window: int = 0,
        explain: bool = False,
        now: datetime | None = None,
        config: RetrievalConfig | None = None,
    ) -> tuple[list[RoutedHit], SearchExplain | None]:
        cfg = config or self.config
        t_start = time.perf_counter()
        now = now or datetime.now(UTC)
        stages: list[Stage] = []
        idx = self.scope_index(scope.vault, scope.user_id)
        n_cand = max(cfg.candidates, 4 * k)

        # dense
        t0 = time.perf_counter()
        where: dict[str, Any] = {}
        if scope.session_id:
            where["session_id"] = scope.session_id
        if scope.agent_id:
            where["agent_id"] = scope.agent_id
        if len(where) > 1:
            where = {"$and": [{key: v} for key, v in where.items()]}
        qvec = self.vault.embedder.embed_query(intent.content or query)
        found = self.vault.index.query(scope.vault, scope.user_id, qvec, n=n_cand,
                                       where=where or None)
        dense = {cid: float(s) for cid, s in found}
        stages.append(_stage("dense", t0, found, cfg, detail={"n": n_cand}))

        with idx.lock:
            # keyword
            t0 = time.perf_counter()
            kw = idx.keyword_scores(intent.keywords) if intent.keywords else {}
            kw_top: dict[str, list[tuple[int, float]]] = {}
            for name, arr in kw.items():
                kw_top[name] = _top(arr, n_cand)
            stages.append(
                _stage("keyword", t0, [(idx.docs[i].id, s) for i, s in kw_top.get("keyword", [])],
                       cfg, detail={"terms": intent.keywords,
                                    "context_hits": len(kw_top.get("context", [])),
                                    "window_hits": len(kw_top.get("window", []))})
            )

            # graph: entities and concepts -> facts, one hop over concept relations
            t0 = time.perf_counter()
            graph_scores, gdetail = self._graph_route(idx, intent, scope, n_cand)
            stages.append(_stage("graph", t0, sorted(graph_scores.items(), key=lambda x: -x[1]),
                                 cfg, detail=gdetail))

            # pool: every route's candidates and their session neighbours
            t0 = time.perf_counter()
            pool: set[int] = set()
            for cid in dense:
                if (i := idx.pos.get(cid)) is not None:
                    pool.add(i)
            for lst in kw_top.values():
                pool.update(i for i, s in lst if s > 0)
            for cid in graph_scores:
                if (i := idx.pos.get(cid)) is not None:
                    pool.add(i)
            before, after = idx.adjacent(sorted(pool))
            pool.update(before[before >= 0].tolist())
            pool.update(after[after >= 0].tolist())
            dropped: Counter[str] = Counter()
            order = sorted(pool)
            order = self._filter(idx, order, scope, tags, as_of, now, dropped)
            time_range = self._resolve_time(idx, intent, scope, as_of)
            tf_mode = "none"
            in_range: np.ndarray = np.zeros(len(order), dtype=bool)
            if time_range is not None and (time_range.start or time_range.end):
                in_range = np.array(
                    [time_range.contains(_dt(idx.docs[i].valid_from)) for i in order], dtype=bool
                )
                tf_mode = cfg.time_filter
                if tf_mode == "auto":
                    tf_mode = "hard" if intent.time is not None and intent.time.anchor is None \
                        and in_range.any() and time_range.expression != "(chat model)" \
                        and _is_explicit(time_range) else "soft"
                if tf_mode == "hard":
                    if in_range.any():
                        dropped["time_range"] += int((~in_range).sum())
                        order = [i for i, ok in zip(order, in_range, strict=True) if ok]
                        in_range = np.ones(len(order), dtype=bool)
                    else:
                        tf_mode = "soft"
            stages.append(Stage(name="filter", took_ms=_ms(t0), total=len(order),
                                detail={"pool": len(pool), "dropped": dict(dropped),
                                        "time_filter": tf_mode}))

            # fuse
            t0 = time.perf_counter()
            fused, parts = self._fuse(idx, order, dense, kw, graph_scores, intent, in_range, cfg)
            ranked = sorted(range(len(order)), key=lambda j: -fused[j])
            stages.append(Stage(name="fuse", took_ms=_ms(t0), total=len(order),
                                detail={"fusion": cfg.fusion}))
            cand_ids = [idx.docs[order[j]].id for j in ranked]
            fused_by_id = {idx.docs[order[j]].id: float(fused[j]) for j in ranked}
            parts_by_id = {idx.docs[order[j]].id: {n: float(v[j]) for n, v in parts.items()}
                           for j in ranked[: max(k * 3, cfg.explain_top)]}

        # rerank (optional)
        if self.reranker is not None and cand_ids:
            t0 = time.perf_counter()
            head = cand_ids[: max(k * 3, 30)]
            cubes = self.vault.catalog.get_many(head)
            texts = [cubes[c].content if c in cubes else "" for c in head]
            rs = list(self.reranker(query, texts))
            hi = max(rs) if rs else 1.0
            lo = min(rs) if rs else 0.0
            for c, r in zip(head, rs, strict=True):
                fused_by_id[c] = 0.5 * fused_by_id[c] + 0.5 * ((r - lo) / (hi - lo or 1.0))
            head.sort(key=lambda c: -fused_by_id[c])
            cand_ids = head + cand_ids[len(head):]
            stages.append(Stage(name="rerank", took_ms=_ms(t0), total=len(head)))

        # materialise
        t0 = time.perf_counter()
        hits: list[RoutedHit] = []
        routes_of = _routes(dense, kw_top, graph_scores, idx)
        # scores in (0, 1]: the fused score, scaled down only when the best one passes 1
        top_fused = max(1.0, max(fused_by_id.values(), default=1.0))
        start = 0
        while len(hits) < k and start < len(cand_ids):
            chunk = cand_ids[start : start + k + 8]
            start += len(chunk)
            cubes = self.vault.catalog.get_many(chunk)
            for cid in chunk:
                cube = cubes.get(cid)
                if cube is None or cube.scope.user_id != scope.user_id or \
                        cube.scope.vault != scope.vault:
                    continue
                if not _current(cube, as_of, now):
                    dropped["not_live"] += 1
                    continue
                cos = dense.get(cid)
                if min_score is not None and (cos is None or cos < min_score):
                    dropped["min_score"] += 1
                    continue
                if not cube.intact:
                    log.warning("cube %s does not match its fingerprint; not served", cid)
                    continue
                score = max(1e-6, fused_by_id[cid] / top_fused)
                hits.append(RoutedHit(cube=cube, score=round(score, 6), fused=fused_by_id[cid],
                                      dense=None if cos is None else round(cos, 6),
                                      routes=routes_of.get(cid, [])))
                if len(hits) == k:
                    break
        if window > 0 and hits:
            self._attach_context(idx, hits, window)
        stages.append(Stage(name="materialise", took_ms=_ms(t0), total=len(hits),
                            detail={"window": window}))
        ex = None
        if explain:
            top = cand_ids[: cfg.explain_top]
            texts = self.vault.catalog.get_many(top)
            ex = SearchExplain(
                intent=intent,
                stages=stages,
                fused=[
                    FusedScore(id=c, rank=r, score=round(fused_by_id[c], 6),
                               parts={n: round(v, 4) for n, v in parts_by_id.get(c, {}).items()},
                               text=texts[c].content[:160] if c in texts else "")
                    for r, c in enumerate(top)
                ],
                time_range=time_range,
                time_filter=tf_mode,
                dropped=dict(dropped),
                config=cfg,
                took_ms=_ms(t_start),
            )
        return hits, ex

    def _graph_route(
        self, idx: ScopeIndex, intent: MemoryIntent, scope: Scope, n: int
    ) -> tuple[dict[str, float], dict[str, Any]]:
        from .reader import concept_key

        graph = self.vault.graph
        names = [norm_entity(e) for e in intent.entities]
        words = [w.lower().strip("?.,!") for w in (intent.content or intent.query).split()]
        grams = {" ".join(words[i:i + m]) for m in (1, 2, 3) for i in range(len(words) - m + 1)}
        entities = list(dict.fromkeys(idx.known_entities([*names, *sorted(grams)])))
        # the graph is asked only about names and concepts on at most `graph_fanout` facts,
        # which bounds its cost at any scale; broader ones still count in fusion (entity
        # match, BM25)
        common = self.config.graph_fanout
        broad = [e for e in entities if idx.entity_names[e] > common]
        entities = [e for e in entities if idx.entity_names[e] <= common]
        scores: dict[str, float] = {}
        detail: dict[str, Any] = {"entities": entities, "too_common": broad}
        if entities:
            for fid, m in graph.facts_mentioning(scope.vault, scope.user_id, entities, limit=n):
                scores[fid] = scores.get(fid, 0.0) + m / len(entities)
        stems = [concept_key(c) for c in intent.concepts]
        toks = [t for t in (concept_key(w) for w in words) if t]
        cgrams = {" ".join(toks[i:i + m]) for m in (1, 2, 3) for i in range(len(toks) - m + 1)}
        concepts = list(dict.fromkeys([*stems, *sorted(cgrams)]))
        named = {norm_entity(e) for e in [*entities, *broad]}
        concepts = [c for c in concepts if c and c not in named]
        df = idx.doc_freq()

        def too_wide(c: str) -> bool:
            return min((df.get(w, 0) for w in c.split()), default=0) > common

        wide = [c for c in concepts if too_wide(c)]
        concepts = [c for c in concepts if c not in wide]
        detail["too_common"] = [*broad, *wide]
        if concepts and hasattr(graph, "facts_about"):
            hits = graph.facts_about(scope.vault, scope.user_id, concepts, limit=n)
            for fid, m in hits:
                scores[fid] = scores.get(fid, 0.0) + m
            related = graph.related_concepts(scope.vault, scope.user_id, concepts, limit=10)
            # a neighbour concept as broad as "work" or "store" would cost a scan of its facts
            hop = [o for o in dict.fromkeys(o for _, o, _, _ in related if o not in concepts)
                   if not too_wide(o)][:5]
            detail["concepts"] = concepts[:20]
            detail["hop"] = [(a, b, kind, w) for a, b, kind, w in related[:10]]
            detail["hop_used"] = hop
            if hop:
                for fid, m in graph.facts_about(scope.vault, scope.user_id, hop, limit=n // 2):
                    scores[fid] = scores.get(fid, 0.0) + 0.5 * m
        return scores, detail

    def _filter(
        self,
        idx: ScopeIndex,
        order: list[int],
        scope: Scope,
        tags: Sequence[str] | None,
        as_of: datetime | None,
        now: datetime,
        dropped: Counter[str],
    ) -> list[int]:
        t_now = now.timestamp()
        t_as = as_of.timestamp() if as_of else None
        out = []
        for i in order:
            d = idx.docs[i]
            if not d.alive:
                continue
            if scope.session_id and d.session != scope.session_id:
                dropped["session"] += 1
                continue
            if d.expires_at is not None and d.expires_at <= t_now:
                dropped["expired"] += 1
                continue
            if t_as is None:
                if d.state not in LIVE:
                    dropped["superseded"] += 1
                    continue
            else:
                if d.valid_from > t_as or (d.valid_to is not None and d.valid_to <= t_as):
                    dropped["as_of"] += 1
                    continue
            out.append(i)
        if tags:
            wanted = set(tags)
            cubes = self.vault.catalog.get_many([idx.docs[i].id for i in out])
            keep = []
            for i in out:
                c = cubes.get(idx.docs[i].id)
                if c is not None and wanted & set(c.organisation.tags):
                    keep.append(i)
                else:
                    dropped["tags"] += 1
            out = keep
        if scope.agent_id:
            cubes = self.vault.catalog.get_many([idx.docs[i].id for i in out])
            keep = [i for i in out if (c := cubes.get(idx.docs[i].id)) is not None
                    and c.scope.agent_id == scope.agent_id]
            dropped["agent"] += len(out) - len(keep)
            out = keep
        return out

    def _resolve_time(
        self, idx: ScopeIndex, intent: MemoryIntent, scope: Scope, as_of: datetime | None
    ) -> TimeRange | None:
        """The query's time range against this scope's memories: an event anchor ("after
        the trip") becomes the time of the best keyword match of the event; a relative range
        ("last week") or a month without a year that holds no memory is moved to the scope's
        own present (its latest memory), or the latest year that has memories in that month."""
        from datetime import timedelta

        tr = intent.time
        if tr is None:
            return None
        if tr.anchor is None:
            dead, all_times = idx.arrays()
            times = all_times[~dead]
            lo = tr.start.timestamp() if tr.start else -np.inf
            hi = tr.end.timestamp() if tr.end else np.inf
            if not len(times) or ((times >= lo) & (times < hi)).any():
                return tr
            if tr.relative:
                shift = _dt(times.max()) - (as_of or datetime.now(UTC))
                moved = tr.model_copy(update={
                    "start": tr.start + shift + timedelta(days=1) if tr.start else None,
                    "end": tr.end + shift + timedelta(days=1) if tr.end else None,
                    "expression": f"{tr.expression} (before the latest memory)",
                })
                return moved
            if tr.yearless and tr.start is not None and tr.end is not None:
                for back in range(1, 30):
                    try:
                        start = tr.start.replace(year=tr.start.year - back)
                        end = tr.end.replace(year=tr.end.year - back)
                    except ValueError:  # 29 February
                        continue
                    if ((times >= start.timestamp()) & (times < end.timestamp())).any():
                        return tr.model_copy(update={
                            "start": start, "end": end,
                            "expression": f"{tr.expression} ({start.year})",
                        })
            return tr
        # "before the trip": the time of the best keyword match of the anchor
        toks = keyword_tokens(tr.anchor)
        if not toks:
            return None
        scores = idx.keyword_scores(toks)["keyword"]
        if not len(scores) or scores.max() <= 0:
            return None
        at = _dt(idx.docs[int(scores.argmax())].valid_from)
        if tr.direction == "before":
            return tr.model_copy(update={"end": at})
        return tr.model_copy(update={"start": at})

    def _fuse(
        self,
        idx: ScopeIndex,
        order: list[int],
        dense: dict[str, float],
        kw: dict[str, np.ndarray],
        graph: dict[str, float],
        intent: MemoryIntent,
        in_range: np.ndarray,
        cfg: RetrievalConfig,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        m = len(order)
        if m == 0:
            return np.zeros(0), {}
        ids = [idx.docs[i].id for i in order]
        if cfg.w_prev_dense or (cfg.neighbour and m > 1):
            # where each turn's session neighbours sit in `order` (sorted), if they are in it
            rows = np.asarray(order, dtype=np.int64)

            def located(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                at = np.minimum(np.searchsorted(rows, targets), m - 1)
                return at, (targets >= 0) & (rows[at] == targets)

            at_prev, at_next = map(located, idx.adjacent(order))
        floor = min(dense.values()) if dense else 0.0
        d_raw = np.array([dense.get(c, floor) for c in ids], dtype=np.float64)
        signals: dict[str, np.ndarray] = {"dense": d_raw}
        for name in ("keyword", "context", "window"):
            if name in kw:
                signals[name] = kw[name][order].astype(np.float64)
        if graph:
            signals["graph"] = np.array([graph.get(c, 0.0) for c in ids], dtype=np.float64)
        weights = {"dense": cfg.w_dense, "keyword": cfg.w_keyword, "context": cfg.w_context,
                   "window": cfg.w_window, "graph": cfg.w_graph}
        parts: dict[str, np.ndarray] = {}
        if cfg.fusion == "rrf":
            total = np.zeros(m)
            for name, arr in signals.items():
                ranks = np.empty(m)
                ranks[np.argsort(-arr, kind="stable")] = np.arange(m)
                parts[name] = weights[name] / (cfg.rrf_k + 1 + ranks)
                total += parts[name]
            norm = sum(weights[n] for n in signals) / (cfg.rrf_k + 1)
            base = total / norm
        else:
            active = 0.0
            base = np.zeros(m)
            for name, arr in signals.items():
                lo = arr.min() if name == "dense" else 0.0
                hi = arr.max()
                if hi <= lo:
                    if hi <= 0 and name != "dense":
                        continue  # the route found nothing: no say in the ranking
                    scaled = np.ones(m)
                else:
                    scaled = (arr - lo) / (hi - lo)
                parts[name] = weights[name] * scaled
                base += parts[name]
                active += weights[name]
            if "dense" in parts and cfg.w_prev_dense:
                at, ok = at_prev
                prev = np.where(ok, parts["dense"][at], 0.0)
                parts["prev_dense"] = cfg.w_prev_dense * prev / max(cfg.w_dense, 1e-9)
                base += parts["prev_dense"]
            base = base / max(active, 1e-9)
        fused = base.copy()
        if cfg.neighbour and m > 1:
            (ap, okp), (an, okn) = at_prev, at_next
            nb = np.maximum(np.where(okp, base[ap], -np.inf), np.where(okn, base[an], -np.inf))
            parts["neighbour"] = cfg.neighbour * np.where(np.isneginf(nb), 0.0, nb)
            fused += parts["neighbour"]
        # entities the query names: spoken by (1) or mentioned in (0.5) the turn
        names = [norm_entity(e) for e in intent.entities]
        names = [n for n in dict.fromkeys(names) if n in idx.entity_names]
        if names and cfg.w_entity:
            ent = np.zeros(m)
            for j, i in enumerate(order):
                d = idx.docs[i]
                ent[j] = sum(1.0 if d.speaker == n else 0.5 if n in d.entities else 0.0
                             for n in names) / len(names)
            if ent.max() > ent.min():
                parts["entity"] = cfg.w_entity * ent
                fused += parts["entity"]
        if in_range.any() and not in_range.all() and cfg.w_time:
            # "before / after <event>" is a constraint of the question itself: weigh it more
            w = cfg.w_time * (2.0 if intent.time is not None and intent.time.anchor else 1.0)
            parts["time"] = w * in_range.astype(np.float64)
            fused += parts["time"]
        w_rec = cfg.w_recency_asked if intent.wants_recent else cfg.w_recency
        if w_rec:
            t = np.array([idx.docs[i].valid_from for i in order])
            span = max(t.max() - t.min(), 1.0)
            parts["recency"] = w_rec * (t - t.min()) / span
            fused += parts["recency"]
        if cfg.w_importance:
            imp = np.array([idx.docs[i].importance for i in order])
            parts["importance"] = cfg.w_importance * imp
            fused += parts["importance"]
        return fused, parts

    def _attach_context(self, idx: ScopeIndex, hits: list[RoutedHit], window: int) -> None:
        with idx.lock:
            want = {}
            for h in hits:
                i = idx.pos.get(h.cube.id)
                want[h.cube.id] = [] if i is None else [
                    idx.docs[j].id for j in idx.neighbours(i, window, window)
                    if idx.docs[j].state in LIVE
                ]
        cubes = self.vault.catalog.get_many(sorted({c for ids in want.values() for c in ids}))
        for h in hits:
            ctx = [cubes[c] for c in want[h.cube.id] if c in cubes and cubes[c].intact]
            h.context = sorted(ctx, key=lambda c: c.lifecycle.created_at)


def _routes(dense: dict[str, float], kw_top: dict[str, list[tuple[int, float]]],
            graph: dict[str, float], idx: ScopeIndex) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for cid in dense:
        out.setdefault(cid, []).append("dense")
    for name, lst in kw_top.items():
        for i, s in lst:
            if s > 0:
                out.setdefault(idx.docs[i].id, []).append(name)
    for cid in graph:
        out.setdefault(cid, []).append("graph")
    return out


def _is_explicit(tr: TimeRange) -> bool:
    """A stated date with its year ("in May 2023", "on 8 May, 2023"), not a relative or
    year-less one ("last week", "in June"), which only weighs in."""
    return not tr.relative and not tr.yearless


def _current(cube: MemCube, as_of: datetime | None, now: datetime) -> bool:
    if as_of is None:
        return cube.is_live(now)
    lc = cube.lifecycle
    if lc.state.value not in INDEXED:
        return False
    if lc.expires_at is not None and lc.expires_at <= now:
        return False
    start = lc.valid_from or lc.created_at
    return start <= as_of and (lc.valid_to is None or lc.valid_to > as_of)


def _top(arr: np.ndarray, n: int) -> list[tuple[int, float]]:
    if not len(arr):
        return []
    n = min(n, len(arr))
    idx = np.argpartition(-arr, n - 1)[:n]
    idx = idx[np.argsort(-arr[idx], kind="stable")]
    return [(int(i), float(arr[i])) for i in idx if arr[i] > 0]


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def _stage(name: str, t0: float, found: Sequence[tuple[str, float]], cfg: RetrievalConfig,
           detail: dict[str, Any] | None = None) -> Stage:
    return Stage(
        name=name,
        took_ms=_ms(t0),
        total=len(found),
        candidates=[StageCandidate(id=c, score=round(float(s), 6), rank=r)
                    for r, (c, s) in enumerate(found[: cfg.explain_top])],
        detail=detail or {},
    )


__all__ = [
    "FusedScore",
    "RetrievalConfig",
    "RoutedHit",
    "Router",
    "ScopeIndex",
    "SearchExplain",
    "SearchResult",
    "Stage",
]
