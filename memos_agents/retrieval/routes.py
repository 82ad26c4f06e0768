"""The routes: each finds candidates for a query its own way and says what it found.

    dense    the scope's Chroma collection (cosine similarity)
    keyword  BM25 over "speaker: text" (keyword), and over each turn with its session
             neighbours (context: `context_turns` either side, window: `window_turns`)
    graph    concepts -> facts about them, and one hop over BROADER, a phrase and its head
             word (RELATED too with graph_hop), those that mention the query's entities first;
             entities -> facts that mention them when the concepts find none
    walk     (opt-in, `seeded`: runs after the others) spreading activation from the query's
             entities / concepts and the other routes' best facts, fact -> entity / concept ->
             fact; scores the facts it reaches beyond those seeds, with the path in `explain`
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
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
from .lexicon import expandable_words
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
    seeds: list[tuple[str, float]] = field(default_factory=list)  # for `seeded` routes
    vector: list[float] | None = None  # the query's embedding, once a route has computed it
    _embedding: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def embedded(self, embedder: Embedder) -> list[float]:
        """The query's embedding (computed once per search, shared by the routes, which may
        run on two threads)."""
        with self._embedding:
            if self.vector is None:
                self.vector = embedder.embed_query(self.intent.content or self.text)
            return self.vector


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
        at = idx.pos.rows_of(list(self.by_id))
        out = set(at[at >= 0].tolist())
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

    def labels(self, id_at: Mapping[int, str]) -> Iterable[tuple[str, str]]:
        """(cube id, signal name) for everything it found (its top rows: those in `id_at`,
        row -> cube id)."""
        for cid in self.by_id:
            yield cid, self.route
        for name, lst in self.top.items():
            for i, s in lst:
                if s > 0 and (cid := id_at.get(i)) is not None:
                    yield cid, name


class Route(Protocol):
    name: str
    signals: tuple[str, ...]
    needs_index: bool  # reads the scope index (BM25, entity names)
    needs_intent: bool  # reads more of the intent than its content
    needs_organised: bool  # reads what the operator organises after a write (concept links)
    seeded: bool  # runs after the other routes, from their best candidates (`Query.seeds`)

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
    seeded = False

    def __init__(self, index: VectorIndex, embedder: Embedder) -> None:
        self.index, self.embedder = index, embedder

    def find(self, q: Query, idx: ScopeIndex | None = None) -> Found:
        t0 = time.perf_counter()
        qvec = q.embedded(self.embedder)
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
    """BM25 of the query's keywords over each turn, and over each turn with its neighbours; the
    keywords with each query word's nearest words of the scope (`Lexicon.expand`, when given
    an embedder)."""

    name = "keyword"
    signals = ("keyword", "context", "window")
    needs_index = True
    needs_intent = True
    needs_organised = False
    seeded = False

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder = embedder

    def find(self, q: Query, idx: ScopeIndex | None) -> Found:
        assert idx is not None
        t0 = time.perf_counter()
        terms = list(q.intent.keywords)
        expanded: dict[str, list[str]] = {}
        if terms and q.cfg.keyword_expansion and self.embedder is not None:
            expanded = idx.lexicon.expand(expandable_words(q.text), self.embedder,
                                          q.cfg.keyword_expansion, q.cfg.keyword_expansion_min)
            terms += [s for s in dict.fromkeys(s for ss in expanded.values() for s in ss)
                      if s not in terms]
        kw = idx.keyword_scores(terms) if terms else {}
        top = {name: top_rows(arr, q.n) for name, arr in kw.items()}
        stage = stage_of(self.name, t0, [(idx.id_of(i), s) for i, s in top.get("keyword", [])],
                         q.cfg.explain_top,
                         {"terms": terms, "expanded": expanded,
                          "context_hits": len(top.get("context", [])),
                          "window_hits": len(top.get("window", []))})
        return Found(route=self.name, arrays=kw, top=top, stage=stage)


def _grams(words: Sequence[str]) -> list[str]:
    """Every 1-, 2- and 3-word run of `words`, sorted."""
    return sorted({" ".join(words[i:i + m]) for m in (1, 2, 3) for i in range(len(words) - m + 1)})


class GraphRoute:
    """The query's concepts -> facts about them, and one hop over BROADER, a phrase and its
    head word ("class" <-> "pottery class"; RELATED co-occurrence too with
    `graph_hop="related"`), at half weight; of those, the facts that also mention the query's
    entities (on both paths) score up to twice as much. A query whose concepts find no fact
    gets its entities' facts instead (`graph_entity_facts`): a fact that shares only a name
    with the question is no graph hit otherwise. Names and concepts on more than
    `graph_fanout` facts are not asked about (they still count in fusion), which bounds the
    route's cost at any scale. It reads concept links the operator makes after a write: the
    router waits for those of the scope first (`needs_organised`)."""

    name = "graph"
    signals = ("graph",)
    needs_index = True
    needs_intent = True
    needs_organised = True
    seeded = False

    def __init__(self, graph: GraphStore, index: VectorIndex | None = None,
                 embedder: Embedder | None = None) -> None:
        self.graph = graph
        self.index, self.embedder = index, embedder

    def find(self, q: Query, idx: ScopeIndex | None) -> Found:
        assert idx is not None
        t0 = time.perf_counter()
        scores: dict[str, float] = {}
        words = query_words(q)
        entities, broad = self._entities(idx, q, words)
        concepts, wide = self._concepts(idx, q, words, {*entities, *broad})
        detail: dict[str, Any] = {"entities": entities, "too_common": [*broad, *wide]}
        if concepts:
            self._about(idx, q, concepts, scores, detail)
        if entities and q.cfg.graph_entity_facts != "none":
            if scores:
                self._on_both(q, entities, scores, detail)
            else:
                self._entity_facts(q, entities, scores, detail)
        found = sorted(scores.items(), key=lambda x: -x[1])
        return Found(route=self.name, by_id=scores,
                     stage=stage_of(self.name, t0, found, q.cfg.explain_top, detail))

    def _on_both(self, q: Query, entities: list[str], scores: dict[str, float],
                 detail: dict[str, Any]) -> None:
        """Facts about the query's concepts that also mention its entities (on both paths:
        entity -> fact <- concept) score up to twice as much, by the share of the entities
        they mention."""
        s, v = q.scope.vault, q.scope.user_id
        mentions = dict(self.graph.facts_mentioning(
            s, v, entities, limit=q.cfg.graph_fanout * len(entities)))
        both = [f for f in scores if f in mentions]
        for fid in both:
            scores[fid] *= 1.0 + mentions[fid] / len(entities)
        detail["on_both"] = len(both)

    def _entity_facts(self, q: Query, entities: list[str], scores: dict[str, float],
                      detail: dict[str, Any]) -> None:
        """The query's entities' facts (`graph_entity_facts`), for a query whose concepts
        find none."""
        s, v, n = q.scope.vault, q.scope.user_id, q.n
        mode = q.cfg.graph_entity_facts
        if mode in ("newest", "all") or self.index is None or self.embedder is None:
            lim = n if mode == "newest" else q.cfg.graph_fanout * len(entities)
            for fid, m in self.graph.facts_mentioning(s, v, entities, limit=lim):
                scores[fid] = scores.get(fid, 0.0) + m / len(entities)
        else:
            self._by_meaning(q, entities, scores, detail)

    def _by_meaning(self, q: Query, entities: list[str], scores: dict[str, float],
                    detail: dict[str, Any]) -> None:
        """Every fact of the query's entities (the graph's candidates), ranked by the cosine
        of its stored vector to the query (the vector index, restricted to those facts): the
        best `n` score their entity match times their cosine relative to the nearest's."""
        assert self.index is not None and self.embedder is not None
        s, v, n = q.scope.vault, q.scope.user_id, q.n
        got = dict(self.graph.facts_mentioning(s, v, entities,
                                               limit=q.cfg.graph_fanout * len(entities)))
        if not got:
            return
        # n nearest only: asking a filtered HNSW for all of a few hundred ids costs ~15x more
        ranked = self.index.query(s, v, q.embedded(self.embedder), n=min(n, len(got)),
                                  ids=list(got))
        if not ranked:
            return
        hi = ranked[0][1]
        for fid, cos in ranked:
            # relative to the nearest (1); a trace at least, so that what it found counts
            near = 1.0 if hi <= 0 else max(cos / hi, 1e-3)
            scores[fid] = scores.get(fid, 0.0) + got.get(fid, 0) / len(entities) * near
        detail["entity_facts"] = len(got)

    def _entities(self, idx: ScopeIndex, q: Query, words: list[str]) -> tuple[list[str], list[str]]:
        """The scope's entities the query names: (narrow enough to ask about, too common)."""
        return query_entities(idx, q, words, q.cfg.graph_fanout)

    def _concepts(self, idx: ScopeIndex, q: Query, words: list[str],
                  named: set[str]) -> tuple[list[str], list[str]]:
        """The query's concepts that are not names: (narrow enough to ask about, too wide)."""
        return query_concepts(idx, q, words, named, q.cfg.graph_fanout)

    def _about(self, idx: ScopeIndex, q: Query, concepts: list[str],
               scores: dict[str, float], detail: dict[str, Any]) -> None:
        s, v, n = q.scope.vault, q.scope.user_id, q.n
        for fid, m in self.graph.facts_about(s, v, concepts, limit=n):
            scores[fid] = scores.get(fid, 0.0) + m
        # RELATED co-occurrence neighbours ("paint" -> "blue", "inspired") bring in facts that
        # share no meaning with the query: they cost LoCoMo recall (see `graph_hop`)
        related = ([] if q.cfg.graph_hop == "none"
                   else self.graph.related_concepts(s, v, concepts, limit=10))
        if q.cfg.graph_hop == "broader":
            related = [r for r in related if r[2] == "BROADER"]
        # a neighbour concept as broad as "work" or "store" would cost a scan of its facts
        hop = [o for o in dict.fromkeys(o for _, o, _, _ in related if o not in concepts)
               if not _too_wide(idx, o, q.cfg.graph_fanout)][:5]
        detail["concepts"] = concepts[:20]
        detail["hop"] = [(a, b, kind, w) for a, b, kind, w in related[:10]]
        detail["hop_used"] = hop
        if hop:
            for fid, m in self.graph.facts_about(s, v, hop, limit=n // 2):
                scores[fid] = scores.get(fid, 0.0) + 0.5 * m


def query_words(q: Query) -> list[str]:
    return [w.lower().strip("?.,!") for w in (q.intent.content or q.intent.query).split()]


def query_entities(idx: ScopeIndex, q: Query, words: list[str],
                   bound: int) -> tuple[list[str], list[str]]:
    """The scope's entities the query names: (on at most `bound` facts, on more)."""
    names = [norm_entity(e) for e in q.intent.entities]
    entities = list(dict.fromkeys(idx.known_entities([*names, *_grams(words)])))
    broad = [e for e in entities if idx.entity_names[e] > bound]
    return [e for e in entities if idx.entity_names[e] <= bound], broad


def query_concepts(idx: ScopeIndex, q: Query, words: list[str], named: set[str],
                   bound: int) -> tuple[list[str], list[str]]:
    """The query's concepts that are not names: (on at most `bound` facts, on more)."""
    stems = [concept_key(c) for c in q.intent.concepts]
    toks = [t for t in (concept_key(w) for w in words) if t]
    named = {norm_entity(e) for e in named}
    concepts = [c for c in dict.fromkeys([*stems, *_grams(toks)]) if c and c not in named]
    wide = [c for c in concepts if _too_wide(idx, c, bound)]
    return [c for c in concepts if c not in wide], wide


def _shares(start: dict[Node, float], restart: dict[str, float]
            ) -> tuple[dict[Node, float], dict[str, float]]:
    """The walk's starting mass, 1 in all: the query's nodes and the seed facts half each
    when it has both."""
    half = 0.5 if start and restart else 1.0
    total = sum(start.values()) or 1.0
    rtotal = sum(restart.values()) or 1.0
    return ({nd: half * w / total for nd, w in start.items()},
            {f: half * w / rtotal for f, w in restart.items()})


def _too_wide(idx: ScopeIndex, concept: str, bound: int) -> bool:
    df = idx.doc_freq()
    return min((df.get(w, 0) for w in concept.split()), default=0) > bound


def seed_facts(found: Sequence[Found], idx: ScopeIndex, n: int,
               rrf_k: int = 60) -> list[tuple[str, float]]:
    """The `n` best candidates of routes that already ran, by reciprocal rank over each of
    their lists (the first `n` of each), with weights that sum to 1."""
    score: dict[str, float] = {}
    for f in found:
        lists = ([[c for c, _ in f.ranked()]] if f.by_id else
                 [[idx.docs[i].id for i, s in lst if s > 0] for lst in f.top.values()])
        for lst in lists:
            for r, cid in enumerate([c for c in lst if c in idx.pos][:n]):
                score[cid] = score.get(cid, 0.0) + 1.0 / (rrf_k + 1 + r)
    best = sorted(score.items(), key=lambda x: -x[1])[:n]
    total = sum(s for _, s in best) or 1.0
    return [(c, s / total) for c, s in best]


Node = tuple[str, str]  # ("entity" | "concept", norm)


@dataclass
class Walk:
    """The subgraph a walk fetched: facts and the entity / concept nodes they link to."""

    fact_nodes: dict[str, set[Node]] = field(default_factory=dict)
    node_facts: dict[Node, set[str]] = field(default_factory=dict)
    expanded: set[str] = field(default_factory=set)  # facts whose links were fetched
    fetched: set[Node] = field(default_factory=set)  # nodes whose facts were fetched

    def link(self, fid: str, node: Node) -> None:
        self.fact_nodes.setdefault(fid, set()).add(node)
        self.node_facts.setdefault(node, set()).add(fid)

    def spread(self, restart: dict[str, float], start: dict[Node, float], steps: int,
               damping: float) -> dict[str, float]:
        """Spreading activation: mass from the seed facts (`restart`) and the query's nodes
        (`start`) flows along edges split evenly over each vertex's edges, times `damping` a
        step, for `steps` steps; each fact's score is the mass that reached it (its own seed
        mass not counted)."""
        facts = sorted(self.fact_nodes.keys() | restart.keys())
        nodes = sorted(self.node_facts.keys() | start.keys())
        fat = {f: i for i, f in enumerate(facts)}
        nat = {nd: len(facts) + j for j, nd in enumerate(nodes)}
        edges = [(fat[f], nat[nd]) for nd, fs in self.node_facts.items() for f in fs]
        if not edges:
            return {}
        size = len(facts) + len(nodes)
        a = np.zeros(size)
        for f, w in restart.items():
            a[fat[f]] += w
        for nd, w in start.items():
            a[nat[nd]] += w
        one = np.asarray(edges, dtype=np.int64)
        u = np.concatenate([one[:, 0], one[:, 1]])  # both directions
        v = np.concatenate([one[:, 1], one[:, 0]])
        share = 1.0 / np.bincount(u, minlength=size)[u]
        total = np.zeros(size)
        for _ in range(steps):
            a = damping * np.bincount(v, weights=a[u] * share, minlength=size)
            total += a
        return {f: float(total[i]) for i, f in enumerate(facts) if total[i] > 0}

    def path(self, fid: str, restart: dict[str, float], start: dict[Node, float]) -> list[str]:
        """The likeliest way the walk came to `fid`: [seed, node, fact]."""
        best: tuple[float, list[str]] = (0.0, [])
        for nd in self.fact_nodes.get(fid, ()):
            via = f"{nd[0]}:{nd[1]}"
            share = 1.0 / max(len(self.node_facts.get(nd, ())), 1)
            if start.get(nd, 0.0) * share > best[0]:
                best = (start[nd] * share, [f"query {via}", fid])
            for s in self.node_facts.get(nd, ()):
                w = restart.get(s, 0.0) * share / max(len(self.fact_nodes.get(s, ())), 1)
                if s != fid and w > best[0]:
                    best = (w, [s, via, fid])
        return best[1]


class WalkRoute:
    """A walk over the graph from the query's entities and concepts and from the best
    candidates of the routes that ran before it (`seeded`): fact -> entity / concept -> fact,
    `walk_hops` times, each vertex's mass split over its edges (so a node on many facts passes
    little to each), damped a step. It finds facts that share no word with the question but
    share names and concepts with what answers it. Nodes on more than `walk_fanout` facts are
    not walked through, which bounds the subgraph (two Cypher reads a hop, each with a LIMIT)."""

    name = "walk"
    signals = ("walk",)
    needs_index = True
    needs_intent = True
    needs_organised = True
    seeded = True

    def __init__(self, graph: GraphStore) -> None:
        self.graph = graph

    def find(self, q: Query, idx: ScopeIndex | None) -> Found:
        assert idx is not None
        t0 = time.perf_counter()
        cfg = q.cfg
        words = query_words(q)
        entities, broad = query_entities(idx, q, words, cfg.walk_fanout)
        concepts, _ = query_concepts(idx, q, words, {*entities, *broad}, cfg.walk_fanout)
        start: dict[Node, float] = {("entity", e): 1.0 for e in entities}
        start.update({("concept", c): 0.5 for c in concepts})
        restart = dict(q.seeds)
        walk = Walk()
        self._fetch(q, idx, walk, list(restart), list(start))
        start, restart = _shares({nd: w for nd, w in start.items() if nd in walk.node_facts},
                                 restart)
        mass = walk.spread(restart, start, 2, cfg.walk_damping)
        for hop in range(1, cfg.walk_hops):
            frontier = [f for f, _ in sorted(mass.items(), key=lambda x: -x[1])
                        if f not in walk.expanded][: cfg.walk_seeds]
            self._fetch(q, idx, walk, frontier, [])
            mass = walk.spread(restart, start, 2 * (hop + 1), cfg.walk_damping)
        # what the walk adds: facts the other routes did not already put first
        found = sorted(((f, m) for f, m in mass.items() if f not in restart),
                       key=lambda x: -x[1])[: q.n]
        detail: dict[str, Any] = {
            "seeds": [c for c, _ in q.seeds], "entities": entities, "concepts": concepts[:20],
            "facts": len(walk.fact_nodes), "nodes": len(walk.node_facts),
            "paths": {f: walk.path(f, restart, start) for f, _ in found[: cfg.explain_top]},
        }
        return Found(route=self.name, by_id=dict(found),
                     stage=stage_of(self.name, t0, found, cfg.explain_top, detail))

    def _fetch(self, q: Query, idx: ScopeIndex, walk: Walk, frontier: list[str],
               nodes: list[Node]) -> None:
        """The links of the `frontier` facts, then the facts of every node not yet fetched
        that is narrow enough (on at most `walk_fanout` facts)."""
        s, v, bound = q.scope.vault, q.scope.user_id, q.cfg.walk_fanout

        def narrow(nd: Node) -> bool:
            kind, norm = nd
            if kind == "entity":
                return idx.entity_names.get(norm, 0) <= bound
            return not _too_wide(idx, norm, bound)

        todo = [f for f in frontier if f not in walk.expanded]
        if todo:
            for fid, kind, norm in self.graph.fact_links(s, v, todo, limit=64 * len(todo)):
                if narrow((kind, norm)):
                    walk.link(fid, (kind, norm))
            walk.expanded.update(todo)
        new = {nd for f in todo for nd in walk.fact_nodes.get(f, ())}
        new |= {nd for nd in nodes if narrow(nd)}
        new -= walk.fetched
        walk.fetched |= new
        ents = [n for k, n in new if k == "entity"]
        cons = [n for k, n in new if k == "concept"]
        if ents or cons:
            limit = bound * max(len(ents), len(cons))
            for kind, norm, fid in self.graph.node_facts(s, v, ents, cons, limit=limit):
                walk.link(fid, (kind, norm))
