"""Task-aligned retrieval: a query's `MemoryIntent` routed to the dense index, BM25 and the
graph, fused with time filters, recency and importance, every stage visible in `explain`.

    intent   MemReader.read_intent: entities, concepts, time range, answer kind
    routes   one object per route, by name (`ROUTES`): dense (Chroma, the scope's own
             collection), keyword (BM25 over "speaker: text", and over each turn with its session
             neighbours; each query word with its nearest word of the scope), graph
             (entities -> facts; concepts -> facts, one hop over RELATED / BROADER concepts)
    fuse     each signal scaled to [0, 1] over the candidate pool, weighted and summed; a turn
             also gains from its session neighbours' scores (an answer often follows the
             question that names its subject); entity, time, recency and importance terms
    rerank   optional: any callable (query, texts) -> scores, e.g. a cross-encoder

Presets (`PRESETS`): `hybrid` (every route, fused) and `dense` (the dense route alone, scored
by cosine similarity). The keyword index and the per-scope bookkeeping (`ScopeIndex`) live in
memory, per (vault, user), current before every search with what any process wrote (the
catalog's change marks); beside an SQLite catalog they are snapshotted on disk, and a process
opening a scope maps the snapshot instead of rebuilding. Nothing here ever reads outside the
one (vault, user) scope it was built for.

    config.py   RetrievalConfig, ROUTES, PRESETS
    models.py   RoutedHit, SearchResult and the explain models
    index.py    ScopeIndex (BM25 segments from bm25.py, sessions, entity names)
    lexicon.py  the scope's words and their embeddings (keyword query expansion)
    snapshot.py ScopeIndex snapshots under the data dir (`keyword-index/`)
    routes.py   DenseRoute, KeywordRoute, GraphRoute
    fusion.py   fusion as pure functions over arrays
    filters.py  the pool filter, the query's time range, the last check of a cube
    router.py   Router: the scope indexes and the search pipeline
"""

from .bm25 import BM25Segment, BM25Tail
from .config import PRESETS, ROUTES, RetrievalConfig, resolve_routes
from .index import INDEXED, LIVE, Doc, ScopeIndex, doc_of
from .models import FusedScore, RoutedHit, SearchExplain, SearchResult, Stage, StageCandidate
from .router import Router
from .routes import DenseRoute, Found, GraphRoute, KeywordRoute, Query, Route

__all__ = [
    "INDEXED",
    "LIVE",
    "PRESETS",
    "ROUTES",
    "BM25Segment",
    "BM25Tail",
    "DenseRoute",
    "Doc",
    "Found",
    "FusedScore",
    "GraphRoute",
    "KeywordRoute",
    "Query",
    "RetrievalConfig",
    "Route",
    "RoutedHit",
    "Router",
    "ScopeIndex",
    "SearchExplain",
    "SearchResult",
    "Stage",
    "StageCandidate",
    "doc_of",
    "resolve_routes",
]
