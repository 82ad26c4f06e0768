"""The router: the scope indexes of one vault and the search pipeline.

    routes       each selected route finds candidates (`routes.py`); a `seeded` route (walk)
                 runs after the others, from their best candidates (`seed_facts`)
    pool         their candidates and the session neighbours of those; then the filter (scope,
                 state, TTL, `as_of`, tags, agent) and the query's time range (hard or soft)
    fuse         the routes' signals and the terms, fused (`fusion.py`); the opt-in graph
                 neighbour term (`w_graph_neighbour`) reads the pool's entity / concept links
                 (one bounded Cypher read of the facts not yet in the scope index's `links`)
    rerank       optional: any callable (query, texts) -> scores, e.g. a cross-encoder
    materialise  the cubes, checked once more (live, scope, `min_score` on the cosine, intact)

A plan of one route with one signal (the `dense` preset, or `graph` alone) is not fused: its
hits come in that route's order with its own score (for dense: the cosine similarity).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..catalog import Catalog
from ..cube import MemCube, Scope
from ..embeddings import Embedder
from ..graph.base import GraphStore, norm_entity
from ..lifecycle import version_at
from ..reader import MemoryIntent, TimeRange
from ..vector.base import VectorIndex
from . import fusion, snapshot
from .config import ROUTES, RetrievalConfig, resolve_routes
from .filters import current, filter_rows, resolve_time, scope_mismatch, time_mode
from .index import INDEXED, LIVE, Doc, ScopeIndex, doc_of
from .models import FusedScore, RoutedHit, SearchExplain, Stage, elapsed_ms
from .routes import (
    DenseRoute,
    Found,
    GraphRoute,
    KeywordRoute,
    Query,
    Route,
    WalkRoute,
    seed_facts,
)

log = logging.getLogger(__name__)

OVERFETCH = 4  # an unfused plan's spare candidates: k + 4 (k * 4 with tags)

Reranker = Callable[[str, list[str]], Sequence[float]]


@dataclass
class Ranking:
    """The candidates in order, with their scores and how they were found."""

    ids: list[str]
    scores: dict[str, float]
    dense: dict[str, float]
    fused: bool = True
    parts: dict[str, dict[str, float]] = field(default_factory=dict)
    routes_of: dict[str, list[str]] = field(default_factory=dict)
    time_range: TimeRange | None = None
    time_filter: str = "none"
    idx: ScopeIndex | None = None  # the scope index it was ranked over, if any


@dataclass
class Run:
    """What one search recorded on its way: stages and drops."""

    stages: list[Stage] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)


class Router:
    """Routes queries of one vault (all its scopes) and keeps their `ScopeIndex`es."""

    def __init__(
        self,
        catalog: Catalog,
        index: VectorIndex,
        graph: GraphStore,
        embedder: Embedder,
        config: RetrievalConfig | None = None,
        *,
        settle: Callable[[str, str], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.graph = graph
        self.config = config or RetrievalConfig()
        self.routes: dict[str, Route] = {
            "dense": DenseRoute(index, embedder),
            "keyword": KeywordRoute(embedder),
            "graph": GraphRoute(graph, index, embedder),
            "walk": WalkRoute(graph),
        }
        self.settle = settle  # (vault, user): wait for the scope's pending organisation
        self._scopes: dict[tuple[str, str], ScopeIndex] = {}  # least recently used first
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None  # routes that run beside the index's
        self.reranker: Reranker | None = None
        side = catalog.side_dir
        # where scope indexes keep their snapshots (beside an SQLite catalog, or in the data
        # dir for a server catalog; None: nowhere)
        self.snapshots: Path | None = None if side is None else side / "keyword-index"

    # the scope cache
    def scope_index(self, vault: str, user_id: str) -> ScopeIndex:
        """The index of one scope, current with every write any process has committed: the
        scope's change mark is read (one primary-key read) and the rows written since the
        index's mark are applied to it (loaded whole the first time)."""
        key = (vault, user_id)
        with self._lock:
            idx = self._scopes.pop(key, None)
            if idx is None:
                idx = self._new_index(vault, user_id)
            self._scopes[key] = idx  # the most recently used last
            self._unload_beyond(self.config.scope_cache_docs)
        with idx.lock:
            mark = self.catalog.scope_mark(vault, user_id)
            if idx.mark is not None and mark[0] < idx.mark[0]:  # a catalog replaced: anew
                idx.mark = None
            if idx.mark is None and not self._restored(idx, mark):
                idx.load(self._load_docs(vault, user_id))
                idx.mark = mark
            assert idx.mark is not None
            if mark[0] >= idx.mark[0] and mark != idx.mark:
                self._catch_up(idx, mark)
                idx.mark = mark
                root = self.snapshots
                if (root is not None and idx.segments is not None
                        and len(idx.docs) - idx.saved_n >= snapshot.EVERY):
                    snapshot.save(root, idx)  # the tail too: a later open catches up less
        return idx

    def _unload_beyond(self, docs: int) -> None:
        """Unload the least recently used scope indexes while those loaded hold more than
        `docs` documents (the one in use stays); an unloaded scope is restored from its
        snapshot, or built from the catalog, when next searched. Called under `_lock`."""
        held = sum(len(i.docs) for i in self._scopes.values())
        while held > docs and len(self._scopes) > 1:
            oldest = next(iter(self._scopes))
            held -= len(self._scopes.pop(oldest).docs)

    def _new_index(self, vault: str, user_id: str) -> ScopeIndex:
        idx = ScopeIndex(vault, user_id, self.config)
        root = self.snapshots
        if root is not None:
            idx.on_built = lambda built: snapshot.save(root, built)
        return idx

    def _restored(self, idx: ScopeIndex, mark: tuple[int, int]) -> bool:
        """Whether `idx` was filled from its scope's snapshot: one no newer than the catalog
        (`mark`, read again in case the snapshot was written since)."""
        if self.snapshots is None or not snapshot.restore(self.snapshots, idx):
            return False
        assert idx.mark is not None
        if idx.mark[0] > mark[0] and idx.mark[0] > self.catalog.scope_mark(*idx.key)[0]:
            idx.load(())  # a snapshot of another catalog's scope
            idx.mark = None
            return False
        return True

    def _catch_up(self, idx: ScopeIndex, mark: tuple[int, int]) -> None:
        """Apply to `idx` what was written to its scope between its mark and `mark`: the rows
        stamped since, and, after purges, the removal of the ids no longer there."""
        assert idx.mark is not None
        seq, purged = idx.mark
        if mark[0] > seq:
            # rows this process wrote are in the index already (`on_write`): not parsed again
            changed = self.catalog.scope_changes(idx.vault, idx.user_id, seq, held=idx.holds)
            idx.upsert([doc_of(c) for c in changed])
        if mark[1] != purged:
            there = self.catalog.scope_ids(idx.vault, idx.user_id)
            idx.remove([cid for cid in idx.pos if cid not in there])
            if self.snapshots is not None:
                # a snapshot from before the purge holds what was purged: on a server catalog
                # each machine keeps its own, and the purging process could not remove them
                snapshot.drop(self.snapshots, idx.vault, idx.user_id)

    def loaded(self, vault: str, user_id: str) -> ScopeIndex | None:
        return self._scopes.get((vault, user_id))

    def _load_docs(self, vault: str, user_id: str) -> list[Doc]:
        return [doc_of(c) for c in self.catalog.scope_cubes(vault, user_id, INDEXED)]

    def on_write(self, cubes: Sequence[MemCube]) -> None:
        """The vault wrote these cubes: keep loaded scope indexes current."""
        by_scope: dict[tuple[str, str], list[MemCube]] = {}
        for c in cubes:
            by_scope.setdefault((c.scope.vault, c.scope.user_id), []).append(c)
        for (vault, user), group in by_scope.items():
            idx = self._scopes.get((vault, user))
            if idx is not None:
                idx.upsert([doc_of(c) for c in group if c.form.value == "plaintext"])

    def on_purge(self, cube: MemCube) -> None:
        """The vault purged `cube`: out of the loaded index, and its scope's snapshots gone."""
        idx = self._scopes.get((cube.scope.vault, cube.scope.user_id))
        if idx is not None:
            idx.remove([cube.id])
        if self.snapshots is not None:
            snapshot.drop(self.snapshots, cube.scope.vault, cube.scope.user_id)

    # the pipeline
    def plan(self, routes: Sequence[str] | str | None = None) -> list[Route]:
        """The route objects of a preset name or a list of route names (None: hybrid)."""
        return [self.routes[name] for name in resolve_routes(routes)]

    def reads_intent(self, routes: Sequence[str] | str | None = None) -> bool:
        """Whether a plan uses the query's intent (fusion does; the dense route alone embeds
        the query as it is)."""
        plan = self.plan(routes)
        return _fuses(plan) or any(r.needs_intent for r in plan)

    def search(
        self,
        query: str,
        scope: Scope,
        k: int,
        *,
        intent: MemoryIntent,
        routes: Sequence[str] | str | None = None,
        tags: Sequence[str] | None = None,
        min_score: float | None = None,
        as_of: datetime | None = None,
        window: int = 0,
        explain: bool = False,
        now: datetime | None = None,
        config: RetrievalConfig | None = None,
    ) -> tuple[list[RoutedHit], SearchExplain | None]:
        """The `k` best hits of `scope` for `query` over `routes` (see `ROUTES`, `PRESETS`),
        and, if asked, how they were found."""
        t_start = time.perf_counter()
        plan = self.plan(routes)
        fused = _fuses(plan)
        cfg = config or self.config
        n = max(cfg.candidates, 4 * k) if fused else k * OVERFETCH if tags else k + OVERFETCH
        q = Query(text=query, scope=scope, k=k, intent=intent, cfg=cfg,
                  now=now or datetime.now(UTC), n=n, tags=tags, as_of=as_of)
        run = Run()
        if self.settle is not None and any(r.needs_organised for r in plan):
            self.settle(scope.vault, scope.user_id)  # the same hits right after a write
        ranking = self._fused(q, plan, run) if fused else self._single(q, plan[0], run)
        if fused and self.reranker is not None and ranking.ids:
            self._rerank(q, ranking, run)
        hits = self._materialise(q, ranking, run, min_score, window)
        ex = self._explain(q, ranking, run, t_start) if explain else None
        return hits, ex

    def _single(self, q: Query, route: Route, run: Run) -> Ranking:
        """One route, one signal: that route's order and scores."""
        idx = self.scope_index(q.scope.vault, q.scope.user_id) if route.needs_index else None
        if idx is None:
            found = route.find(q, None)
        else:
            with idx.lock:
                found = route.find(q, idx)
        run.stages.append(found.stage)
        ranked = found.ranked()
        return Ranking(ids=[c for c, _ in ranked], scores=dict(ranked), fused=False,
                       dense=found.by_id if route.name == "dense" else {},
                       routes_of={c: [route.name] for c, _ in ranked}, idx=idx)

    def _beside(self, q: Query, routes: Sequence[Route]) -> list[Future[Found]]:
        """Routes that do not read the scope index (dense: the embedder and Chroma, which
        leave the GIL) run on a router thread while this one runs the index's routes (one
        thread per search running at once, up to the executor's default)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(thread_name_prefix="memos-route")
            return [self._pool.submit(r.find, q, None) for r in routes]

    def close(self) -> None:
        """Stop the routes' threads (a later search starts them again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _fused(self, q: Query, plan: Sequence[Route], run: Run) -> Ranking:
        """Every route of the plan, the pool, the filter and the fusion."""
        idx = self.scope_index(q.scope.vault, q.scope.user_id)
        first = [r for r in plan if not r.seeded]
        inside = [r for r in first if r.needs_index]
        outside = [r for r in first if not r.needs_index]
        ahead = self._beside(q, outside) if inside else []
        found = [] if ahead else [r.find(q, None) for r in outside]
        with idx.lock:
            found += [r.find(q, idx) for r in inside]
            found += [f.result() for f in ahead]
            if len(first) < len(plan):  # seeded routes: from the best of the others
                q.seeds = seed_facts(found, idx, q.cfg.walk_seeds)
                found += [r.find(q, idx) for r in plan if r.seeded]
            found.sort(key=lambda f: ROUTES.index(f.route))
            run.stages.extend(f.stage for f in found)
            t0 = time.perf_counter()
            pool: set[int] = set().union(*(f.rows(idx) for f in found))
            before, after = idx.adjacent(sorted(pool))
            pool.update(before[before >= 0].tolist())
            pool.update(after[after >= 0].tolist())
            order = filter_rows(idx, sorted(pool), q.scope, q.tags, q.as_of, q.now, run.dropped,
                                self.catalog.get_many)
            order, in_range, time_range, tf_mode = self._time(idx, q, order, run)
            run.stages.append(Stage(name="filter", took_ms=elapsed_ms(t0), total=len(order),
                                    detail={"pool": len(pool), "dropped": dict(run.dropped),
                                            "time_filter": tf_mode}))
            t0 = time.perf_counter()
            pool_ids = idx.ids_of(order)
            scores, parts, shared = self._fuse(idx, q, order, pool_ids, found, in_range)
            ranked = np.argsort(-scores, kind="stable").tolist()
            ids = [pool_ids[j] for j in ranked]
            head = ranked[: max(q.k * 3, q.cfg.explain_top)]
            detail: dict[str, object] = {"fusion": q.cfg.fusion}
            if shared is not None:
                detail["graph_neighbour"] = _shared_detail(idx, order, head, shared)
            run.stages.append(Stage(name="fuse", took_ms=elapsed_ms(t0), total=len(order),
                                    detail=detail))
            routes_of: dict[str, list[str]] = {}
            id_at = dict(zip(order, pool_ids, strict=True))
            for f in found:
                for cid, name in f.labels(id_at):
                    routes_of.setdefault(cid, []).append(name)
        dense = next((f.by_id for f in found if f.route == "dense"), {})
        return Ranking(ids=ids, scores={c: float(scores[j]) for c, j in zip(ids, ranked,
                                                                           strict=True)},
                       dense=dense, routes_of=routes_of,
                       parts={pool_ids[j]: {n: float(v[j]) for n, v in parts.items()}
                              for j in head},
                       time_range=time_range, time_filter=tf_mode, idx=idx)

    def _time(self, idx: ScopeIndex, q: Query, order: list[int],
              run: Run) -> tuple[list[int], np.ndarray, TimeRange | None, str]:
        """The query's time range: rows in it (said then, or telling of then:
        `ScopeIndex.told_of`), the rows kept (a hard filter keeps only those), the range and the
        filter mode. Whether the filter is hard is decided by the rows said in the range: a
        resolved "last week" is a guess of the day, good for weighing in, not for leaving the
        rest out."""
        time_range = resolve_time(idx, q.intent, q.as_of)
        in_range: np.ndarray = np.zeros(len(order), dtype=bool)
        if time_range is None or not (time_range.start or time_range.end):
            return order, in_range, time_range, "none"
        lo, hi = time_range.bounds()
        froms = idx.col("valid_from")[order]
        said = (froms >= lo) & (froms < hi)
        in_range = said | idx.told_of(order, lo, hi)
        mode = time_mode(q.cfg.time_filter, q.intent, time_range, said)
        if mode == "hard":
            if not in_range.any():
                return order, in_range, time_range, "soft"
            run.dropped["time_range"] += int((~in_range).sum())
            order = [i for i, ok in zip(order, in_range, strict=True) if ok]
            in_range = np.ones(len(order), dtype=bool)
        return order, in_range, time_range, mode

    def _fuse(self, idx: ScopeIndex, q: Query, order: list[int], ids: Sequence[str],
              found: Sequence[Found], in_range: np.ndarray
              ) -> tuple[np.ndarray, dict[str, np.ndarray], fusion.Shared | None]:
        cfg, intent, m = q.cfg, q.intent, len(order)
        signals: dict[str, np.ndarray] = {}
        for f in found:
            signals.update(f.signals(order, ids))
        terms = fusion.Terms(in_range=in_range,
                             anchored=intent.time is not None and bool(intent.time.anchor))
        if m and (cfg.w_prev_dense or (cfg.neighbour and m > 1)):
            # where each turn's session neighbours sit in `order` (sorted), if they are in it
            rows = np.asarray(order, dtype=np.int64)
            terms.prev, terms.next = (fusion.locate(rows, t) for t in idx.adjacent(order))
        names = [n for n in dict.fromkeys(norm_entity(e) for e in intent.entities)
                 if n in idx.entity_names]
        if m and names and cfg.w_entity:
            terms.entity = idx.entity_match(order, names)
        w_rec = cfg.w_recency_asked if intent.wants_recent else cfg.w_recency
        if m and w_rec:
            terms.times = idx.col("valid_from")[order]
        if m and cfg.w_time_stated and intent.answer_kind == "time":
            terms.dated = idx.col("dated")[order]
        if m and cfg.w_importance:
            terms.importance = idx.col("importance")[order]
        if m > 1 and cfg.w_graph_neighbour and any(f.route == "graph" for f in found):
            terms.shared = self._shared(idx, q, ids)
        term_weights = {"prev_dense": cfg.w_prev_dense, "neighbour": cfg.neighbour,
                        "entity": cfg.w_entity, "time": cfg.w_time, "recency": w_rec,
                        "importance": cfg.w_importance, "graph_neighbour": cfg.w_graph_neighbour,
                        "time_stated": cfg.w_time_stated}
        scores, parts = fusion.fuse(m, signals, cfg.signal_weights(), terms, term_weights,
                                    method=cfg.fusion, rrf_k=cfg.rrf_k)
        return scores, parts, terms.shared

    def _shared(self, idx: ScopeIndex, q: Query, ids: Sequence[str]) -> fusion.Shared:
        """The rare entities / concepts two or more of the pool's facts (`ids`) link to: the
        links of facts not yet in `idx.links` are read in one bounded Cypher read and kept
        there (until the fact changes); a node's facts are counted over the whole scope
        (entities: the index's count; concepts: the facts holding their rarest word, an upper
        bound); nodes on more than `graph_neighbour_fanout` facts, and one-word concepts unless
        `graph_neighbour_words`, are left out."""
        cfg = q.cfg
        missing = [c for c in ids if c not in idx.links]
        if missing:
            got: dict[str, list[tuple[str, str]]] = {c: [] for c in missing}
            for fid, kind, norm in self.graph.fact_links(q.scope.vault, q.scope.user_id,
                                                         missing, limit=64 * len(missing)):
                got.setdefault(fid, []).append((kind, norm))
            idx.links.update((c, tuple(v)) for c, v in got.items())
        at: dict[tuple[str, str], list[int]] = {}
        for j, c in enumerate(ids):
            for nd in idx.links.get(c, ()):
                at.setdefault(nd, []).append(j)
        df = idx.doc_freq()
        groups, rarity, names = [], [], []
        for (kind, norm), rows in at.items():
            if len(rows) < 2 or (kind == "concept" and " " not in norm
                                 and not cfg.graph_neighbour_words):
                continue
            seen = (idx.entity_names.get(norm, 0) if kind == "entity"
                    else min((df.get(w, 0) for w in norm.split()), default=0))
            facts = max(seen, len(rows))
            if facts <= cfg.graph_neighbour_fanout:
                groups.append(np.asarray(rows, dtype=np.int64))
                rarity.append(1.0 / (facts - 1))
                names.append(f"{kind}:{norm}")
        return fusion.Shared(groups=groups, rarity=np.asarray(rarity), names=names)

    def _rerank(self, q: Query, ranking: Ranking, run: Run) -> None:
        assert self.reranker is not None
        t0 = time.perf_counter()
        scores = ranking.scores
        head = ranking.ids[: max(q.k * 3, 30)]
        cubes = self.catalog.get_many(head)
        rs = list(self.reranker(q.text, [cubes[c].content if c in cubes else "" for c in head]))
        hi = max(rs) if rs else 1.0
        lo = min(rs) if rs else 0.0
        for c, r in zip(head, rs, strict=True):
            scores[c] = 0.5 * scores[c] + 0.5 * ((r - lo) / (hi - lo or 1.0))
        head.sort(key=lambda c: -scores[c])
        ranking.ids = head + ranking.ids[len(head):]
        run.stages.append(Stage(name="rerank", took_ms=elapsed_ms(t0), total=len(head)))

    def _materialise(self, q: Query, ranking: Ranking, run: Run, min_score: float | None,
                     window: int) -> list[RoutedHit]:
        t0 = time.perf_counter()
        hits: list[RoutedHit] = []
        # scores in (0, 1]: the fused score, scaled down only when the best one passes 1
        top = max(1.0, max(ranking.scores.values(), default=1.0))
        start = 0
        while len(hits) < q.k and start < len(ranking.ids):
            chunk = ranking.ids[start : start + q.k + 8]
            start += len(chunk)
            cubes = self.catalog.get_many(chunk)
            for cid in chunk:
                hit = self._hit(q, ranking, run, cubes.get(cid), min_score, top)
                if hit is not None:
                    hits.append(hit)
                    if len(hits) == q.k:
                        break
        if ranking.idx is not None:
            paths = graph_paths(ranking.idx, run.stages, ranking.routes_of)
            for h in hits:
                h.graph_path = paths(h.cube.id)
        if window > 0 and hits:
            idx = ranking.idx or self.scope_index(q.scope.vault, q.scope.user_id)
            self._attach_context(idx, hits, window)
        run.stages.append(Stage(name="materialise", took_ms=elapsed_ms(t0), total=len(hits),
                                detail={"window": window}))
        return hits

    def _hit(self, q: Query, ranking: Ranking, run: Run, cube: MemCube | None,
             min_score: float | None, top: float) -> RoutedHit | None:
        """The hit of one candidate cube, or None (counted in `run.dropped`)."""
        if cube is None:
            return None
        reason = scope_mismatch(cube, q.scope, q.tags)
        if reason is None and not current(cube, q.as_of, q.now):
            held = self._held_at(cube, q.as_of, q.now)
            if held is None:
                reason = "not_live"
            else:
                cube = held
        cos = ranking.dense.get(cube.id)
        if reason is None and min_score is not None and (cos is None or cos < min_score):
            reason = "min_score"
        if reason is not None:
            if reason:
                run.dropped[reason] += 1
            return None
        if not cube.intact:
            log.warning("cube %s does not match its fingerprint; not served", cube.id)
            return None
        raw = ranking.scores[cube.id]
        score = max(1e-6, raw / top) if ranking.fused else raw / top
        return RoutedHit(cube=cube, score=round(score, 6), fused=raw,
                         dense=None if cos is None else round(cos, 6),
                         routes=ranking.routes_of.get(cube.id, []))

    def _held_at(self, cube: MemCube, as_of: datetime | None, now: datetime) -> MemCube | None:
        """With `as_of`: the version of `cube` that was true then (a cube updated in place
        since is served as it was), unless it has expired by now."""
        if as_of is None:
            return None
        held = version_at(self.catalog.history(cube.id), as_of)
        if held is None or (held.lifecycle.expires_at and held.lifecycle.expires_at <= now):
            return None
        return held

    def _attach_context(self, idx: ScopeIndex, hits: list[RoutedHit], window: int) -> None:
        with idx.lock:
            want = {}
            for h in hits:
                i = idx.pos.get(h.cube.id)
                want[h.cube.id] = [] if i is None else [
                    idx.id_of(j) for j in idx.neighbours(i, window, window)
                    if idx.state_of(j) in LIVE
                ]
        cubes = self.catalog.get_many(sorted({c for ids in want.values() for c in ids}))
        for h in hits:
            ctx = [cubes[c] for c in want[h.cube.id] if c in cubes and cubes[c].intact]
            h.context = sorted(ctx, key=lambda c: c.lifecycle.created_at)

    def _explain(self, q: Query, ranking: Ranking, run: Run, t_start: float) -> SearchExplain:
        top = ranking.ids[: q.cfg.explain_top]
        texts = self.catalog.get_many(top)
        return SearchExplain(
            intent=q.intent,
            stages=run.stages,
            fused=[
                FusedScore(id=c, rank=r, score=round(ranking.scores[c], 6),
                           parts={n: round(v, 4) for n, v in ranking.parts.get(c, {}).items()},
                           text=texts[c].content[:160] if c in texts else "")
                for r, c in enumerate(top)
            ],
            time_range=ranking.time_range,
            time_filter=ranking.time_filter,
            dropped=dict(run.dropped),
            config=q.cfg,
            took_ms=elapsed_ms(t_start),
        )



def _shared_detail(idx: ScopeIndex, order: Sequence[int], head: Sequence[int],
                   shared: fusion.Shared) -> dict[str, object]:
    """What the graph neighbour term did, for `explain`: how many shared nodes it had, and for
    the head rows that gained, the node and the fact the gain came by."""
    via: dict[str, list[str]] = {}
    if shared.via is not None and shared.src is not None:
        for j in head:
            g = int(shared.via[j])
            if g >= 0:
                via[idx.id_of(order[j])] = [shared.names[g],
                                            idx.id_of(order[int(shared.src[j])])]
    return {"nodes": len(shared.groups), "via": via}


def graph_paths(idx: ScopeIndex, stages: Sequence[Stage],
                routes_of: dict[str, list[str]]) -> Callable[[str], list[str]]:
    """Per cube id, the graph path that found it: the walk's path, else the nodes the graph
    route asked about that the fact holds (its entities; the two longest concepts whose words
    it has)."""
    graph = next((s.detail for s in stages if s.name == "graph"), {})
    walk = next((s.detail for s in stages if s.name == "walk"), {})
    asked = [*graph.get("concepts", []), *graph.get("hop_used", [])]

    def path(cid: str) -> list[str]:
        if cid in walk.get("paths", {}):
            return list(walk["paths"][cid])
        row = idx.pos.get(cid)
        if row is None or "graph" not in routes_of.get(cid, ()):
            return []
        doc = idx.docs[row]
        nodes = [f"entity:{e}" for e in graph.get("entities", []) if e in doc.entities]
        toks = set(doc.tokens)
        held = sorted((c for c in asked if set(c.split()) <= toks), key=lambda c: -len(c))
        nodes += [f"concept:{c}" for c in held[:2]]
        return [*nodes, cid] if nodes else []

    return path


def _fuses(plan: Sequence[Route]) -> bool:
    """A plan is fused unless it is one route with one signal."""
    return sum(len(r.signals) for r in plan) > 1
