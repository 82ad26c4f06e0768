"""The routes: each finds candidates for a query its own way and says what it found.

    dense    the scope's Chroma collection (cosine similarity)
    keyword  BM25 over "speaker: text" (keyword), and over each turn with its session
             neighbours (context: `context_turns` either side, window: `window_turns`)
    graph    entities -> facts that mention them; concepts -> facts about them, and one hop
             over RELATED / BROADER concepts
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from ..cube import Scope
from ..embeddings import Embedder
from ..graph.base import GraphStore, norm_entity
from ..reader import MemoryIntent
from ..text import concept_key
from ..vector.base import VectorIndex
from .config import RetrievalConfig
from .index import ScopeIndex
from .models import Stage, stage_of


@dataclass
class Query:
    """One search, as every stage sees it."""

    text: str
    scope: Scope
    k: int
    intent: MemoryIntent
    cfg: RetrievalConfig
    now: datetime
    n: int  # candidates per route
    tags: Sequence[str] | None = None
    as_of: datetime | None = None


@dataclass
class Found:
    """What one route found: scores by cube id (`by_id`), or over every doc of the scope index
    per signal (`arrays`, with each signal's top rows in `top`)."""

    route: str
    stage: Stage
    by_id: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    top: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    floor: bool = False  # ids it did not rank score its lowest score (else 0)

    def ranked(self) -> list[tuple[str, float]]:
        """(id, score), best first (an id-scored route)."""
        return sorted(self.by_id.items(), key=lambda x: -x[1])

    def rows(self, idx: ScopeIndex) -> set[int]:
        """The scope index rows it brings to the pool."""
        out = {i for cid in self.by_id if (i := idx.pos.get(cid)) is not None}
        for lst in self.top.values():
            out.update(i for i, s in lst if s > 0)
        return out

    def signals(self, order: Sequence[int], ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Its scores of the pool (`order`: rows, `ids`: their cube ids)."""
        if self.arrays:
            return {name: arr[order].astype(np.float64) for name, arr in self.arrays.items()}
        if not self.floor and not self.by_id:
            return {}
        missing = min(self.by_id.values()) if self.floor and self.by_id else 0.0
        return {self.route: np.array([self.by_id.get(c, missing) for c in ids],
                                     dtype=np.float64)}

    def labels(self, idx: ScopeIndex) -> Iterable[tuple[str, str]]:
        """(cube id, signal name) for everything it found."""
        for cid in self.by_id:
            yield cid, self.route
        for name, lst in self.top.items():
            for i, s in lst:
                if s > 0:
                    yield idx.docs[i].id, name


class Route(Protocol):
    name: str
    signals: tuple[str, ...]
    needs_index: bool  # reads the scope index (BM25, entity names)
    needs_intent: bool  # reads more of the intent than its content
    needs_organised: bool  # reads what the operator organises after a write (concept links)

    def find(self, q: Query, idx: ScopeIndex | None) -> Found: ...


def scope_where(scope: Scope) -> dict[str, Any] | None:
    """The Chroma metadata filter of a scope's session / agent (None: the whole scope)."""
    where: dict[str, Any] = {}
    if scope.session_id:
        where["session_id"] = scope.session_id
    if scope.agent_id:
        where["agent_id"] = scope.agent_id
    if len(where) > 1:
        where = {"$and": [{key: v} for key, v in where.items()]}
    return where or None


class DenseRoute:
    """The scope's own Chroma collection: the query's content embedded, top `n` by cosine."""

    name = "dense"
    signals = ("dense",)
    needs_index = False
    needs_intent = False
    needs_organised = False

    def __init__(self, index: VectorIndex, embedder: Embedder) -> None:
        self.index, self.embedder = index, embedder

    def find(self, q: Query, idx: ScopeIndex | None = None) -> Found:
        t0 = time.perf_counter()
        qvec = self.embedder.embed_query(q.intent.content or q.text)
        found = self.index.query(q.scope.vault, q.scope.user_id, qvec, n=q.n,
                                 where=scope_where(q.scope))
        return Found(route=self.name, by_id={cid: float(s) for cid, s in found}, floor=True,
                     stage=stage_of(self.name, t0, found, q.cfg.explain_top, {"n": q.n}))


def top_rows(arr: np.ndarray, n: int) -> list[tuple[int, float]]:
    """The `n` best rows of `arr` with a positive score, best first."""
    if not len(arr):
        return []
    n = min(n, len(arr))
    idx = np.argpartition(-arr, n - 1)[:n]
    idx = idx[np.argsort(-arr[idx], kind="stable")]
    return [(int(i), float(arr[i])) for i in idx if arr[i] > 0]


class KeywordRoute:
    """BM25 of the query's keywords over each turn, and over each turn with its neighbours."""

    name = "keyword"
    signals = ("keyword", "context", "window")
    needs_index = True
    needs_intent = True
    needs_organised = False

    def find(self, q: Query, idx: ScopeIndex | None) -> Found:
        assert idx is not None
        t0 = time.perf_counter()
        terms = q.intent.keywords
        kw = idx.keyword_scores(terms) if terms else {}
        top = {name: top_rows(arr, q.n) for name, arr in kw.items()}
        stage = stage_of(self.name, t0, [(idx.docs[i].id, s) for i, s in top.get("keyword", [])],
                         q.cfg.explain_top,
                         {"terms": terms, "context_hits": len(top.get("context", [])),
                          "window_hits": len(top.get("window", []))})
        return Found(route=self.name, arrays=kw, top=top, stage=stage)


def _grams(words: Sequence[str]) -> list[str]:
    """Every 1-, 2- and 3-word run of `words`, sorted."""
    return sorted({" ".join(words[i:i + m]) for m in (1, 2, 3) for i in range(len(words) - m + 1)})


class GraphRoute:
    """Entities the query names -> facts that mention them; its concepts -> facts about them,
    and one hop over RELATED / BROADER concepts (at half weight). Names and concepts on more
    than `graph_fanout` facts are not asked about (they still count in fusion), which bounds
    the route's cost at any scale. It reads concept links the operator makes after a write:
    the router waits for those of the scope first (`needs_organised`)."""

    name = "graph"
    signals = ("graph",)
    needs_index = True
    needs_intent = True
    needs_organised = True

    def __init__(self, graph: GraphStore) -> None:
        self.graph = graph

    def find(self, q: Query, idx: ScopeIndex | None) -> Found:
        assert idx is not None
        t0 = time.perf_counter()
        scores: dict[str, float] = {}
        words = [w.lower().strip("?.,!") for w in (q.intent.content or q.intent.query).split()]
        entities, broad = self._entities(idx, q, words)
        detail: dict[str, Any] = {"entities": entities, "too_common": broad}
        s, v, n = q.scope.vault, q.scope.user_id, q.n
        if entities:
            for fid, m in self.graph.facts_mentioning(s, v, entities, limit=n):
                scores[fid] = scores.get(fid, 0.0) + m / len(entities)
        concepts, wide = self._concepts(idx, q, words, {*entities, *broad})
        detail["too_common"] = [*broad, *wide]
        if concepts:
            self._about(idx, q, concepts, scores, detail)
        found = sorted(scores.items(), key=lambda x: -x[1])
        return Found(route=self.name, by_id=scores,
                     stage=stage_of(self.name, t0, found, q.cfg.explain_top, detail))

    def _entities(self, idx: ScopeIndex, q: Query, words: list[str]) -> tuple[list[str], list[str]]:
        """The scope's entities the query names: (narrow enough to ask about, too common)."""
        names = [norm_entity(e) for e in q.intent.entities]
        entities = list(dict.fromkeys(idx.known_entities([*names, *_grams(words)])))
        common = q.cfg.graph_fanout
        broad = [e for e in entities if idx.entity_names[e] > common]
        return [e for e in entities if idx.entity_names[e] <= common], broad

    def _concepts(self, idx: ScopeIndex, q: Query, words: list[str],
                  named: set[str]) -> tuple[list[str], list[str]]:
        """The query's concepts that are not names: (narrow enough to ask about, too wide)."""
        stems = [concept_key(c) for c in q.intent.concepts]
        toks = [t for t in (concept_key(w) for w in words) if t]
        named = {norm_entity(e) for e in named}
        concepts = [c for c in dict.fromkeys([*stems, *_grams(toks)]) if c and c not in named]
        wide = [c for c in concepts if _too_wide(idx, c, q.cfg.graph_fanout)]
        return [c for c in concepts if c not in wide], wide

    def _about(self, idx: ScopeIndex, q: Query, concepts: list[str],
               scores: dict[str, float], detail: dict[str, Any]) -> None:
        s, v, n = q.scope.vault, q.scope.user_id, q.n
        for fid, m in self.graph.facts_about(s, v, concepts, limit=n):
            scores[fid] = scores.get(fid, 0.0) + m
        related = self.graph.related_concepts(s, v, concepts, limit=10)
        # a neighbour concept as broad as "work" or "store" would cost a scan of its facts
        hop = [o for o in dict.fromkeys(o for _, o, _, _ in related if o not in concepts)
               if not _too_wide(idx, o, q.cfg.graph_fanout)][:5]
        detail["concepts"] = concepts[:20]
        detail["hop"] = [(a, b, kind, w) for a, b, kind, w in related[:10]]
        detail["hop_used"] = hop
        if hop:
            for fid, m in self.graph.facts_about(s, v, hop, limit=n // 2):
                scores[fid] = scores.get(fid, 0.0) + 0.5 * m


def _too_wide(idx: ScopeIndex, concept: str, bound: int) -> bool:
    df = idx.doc_freq()
    return min((df.get(w, 0) for w in concept.split()), default=0) > bound
