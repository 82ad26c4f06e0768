"""The router's weights and sizes, and the named route presets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidInput

ROUTES: tuple[str, ...] = ("dense", "keyword", "graph", "walk")
"""Every route, by name: `dense` (the scope's Chroma collection), `keyword` (BM25 over each turn,
and over each turn with its session neighbours), `graph` (entities and concepts -> facts),
`walk` (a walk over the graph from the query's names and concepts and the other routes' best
facts; not in `hybrid`)."""

PRESETS: dict[str, tuple[str, ...]] = {
    "hybrid": ("dense", "keyword", "graph"),
    "dense": ("dense",),
}
"""Named route sets: `hybrid` (every route, fused) and `dense` (cosine similarity alone)."""


def resolve_routes(routes: Sequence[str] | str | None) -> tuple[str, ...]:
    """The routes to run, in pipeline order: a preset name, a list of route names, or None
    (hybrid). A name that is neither is an InvalidInput naming it and the valid ones."""
    if routes is None:
        return PRESETS["hybrid"]
    if isinstance(routes, str):
        if routes in PRESETS:
            return PRESETS[routes]
        routes = [routes]
    names = list(routes)
    bad = [r for r in names if not isinstance(r, str) or r not in ROUTES]
    if bad or not names:
        what = f"unknown route {bad[0]!r}" if bad else "no route given"
        raise InvalidInput(f"{what}; valid routes: {', '.join(ROUTES)} "
                           f"(presets: {', '.join(PRESETS)})")
    return tuple(r for r in ROUTES if r in names)


class RetrievalConfig(BaseModel):
    """Weights and sizes of the router. Defaults were set on the LoCoMo dev subset only."""

    model_config = ConfigDict(extra="forbid")

    candidates: int = Field(default=100, ge=1, description="per route, before fusion")
    w_dense: float = 1.0
    w_keyword: float = 1.0
    w_context: float = 1.0
    w_window: float = 0.5
    w_graph: float = 0.6
    w_walk: float = 0.6
    w_prev_dense: float = 0.3
    neighbour: float = 0.7
    w_entity: float = 0.5
    w_time: float = 0.5
    w_recency: float = 0.0
    w_recency_asked: float = 0.3
    w_importance: float = 0.0
    w_time_stated: float = Field(
        default=0.05, ge=0, description="a question asking when: candidates whose text says "
        "when (a date, a day, a period, \"... ago\") gain this; a tie-break (LoCoMo dev, "
        "temporal r@5: conv-30 0.923 -> 0.962, conv-26 unchanged; at 0.2 conv-26 loses)")
    w_graph_neighbour: float = Field(
        default=0.0, ge=0,
        description="graph neighbour term: a candidate gains this times the best base score of "
        "another candidate it shares a rare entity / concept with, times that node's rarity "
        "(0: off; needs the graph route in the plan). Off by default: on the LoCoMo dev subset "
        "it lifts recall@5 but not recall@10 on both conversations (issue 12)")
    graph_neighbour_fanout: int = Field(
        default=16, ge=2, description="graph neighbour term: nodes on more facts are not shared")
    graph_neighbour_words: bool = Field(
        default=False, description="graph neighbour term: one-word concepts count too")
    graph_entity_facts: Literal["newest", "all", "dense", "none"] = Field(
        default="newest", description="graph route: the facts about the query's concepts that "
        "mention its entities rank up (on both paths; none: they do not); when its concepts "
        "find no fact, which facts of its entities it scores: the newest `candidates` (newest), "
        "all of them (all), all of them ranked by meaning, the vector index's nearest among "
        "them (dense), or none. LoCoMo dev hybrid r@5 / r@10, adding every entity fact -> both "
        "paths: conv-26 0.783 / 0.846 -> 0.785 / 0.852, conv-30 0.761 / 0.855 -> 0.773 / 0.855, "
        "multi-hop r@10 0.536 -> 0.560 (issue 12). Dense: at 1e5 cubes hybrid p50 / p95 +25 / "
        "+117 ms (a filtered vector query)")
    graph_hop: Literal["related", "broader", "none"] = Field(
        default="broader", description="graph route: the one hop from the query's concepts: "
        "over BROADER, a phrase and its head word (broader: \"class\" <-> \"pottery class\"), "
        "over RELATED co-occurrence too (related), none. LoCoMo dev hybrid r@5 / r@10, related -> "
        "broader: conv-26 0.763 / 0.839 -> 0.783 / 0.846, conv-30 0.758 / 0.855 -> 0.761 / "
        "0.855; none 0.779 / 0.839 and 0.761 / 0.849")
    keyword_expansion: int = Field(
        default=1, ge=0, description="keyword route: each query word's nearest words of the "
        "scope by the embedder (cosine >= keyword_expansion_min, not its own forms) join its "
        "BM25 terms (\"kids\" -> \"children\", \"career\" -> \"job\"); 0: off. LoCoMo dev "
        "hybrid r@5 / r@10: conv-26 0.732 / 0.811 -> 0.761 / 0.836, conv-30 0.736 / 0.802 -> "
        "0.755 / 0.815 (1, 2 and 3 all lift both)")
    keyword_expansion_min: float = Field(
        default=0.6, ge=-1.0, le=1.0, description="keyword expansion: the least cosine of a "
        "scope word to a query word (0.55-0.65 lift both dev conversations)")
    scope_cache_docs: int = Field(
        default=100_000, ge=0, description="documents the loaded scope indexes of a process "
        "hold together at most: beyond it the least recently used scopes are unloaded (and "
        "restored from their snapshot or the catalog when next searched); the scope in use "
        "always stays, so one scope larger than this is still served")
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
    walk_seeds: int = Field(default=10, ge=0,
                            description="walk: the other routes' best facts it starts from")
    walk_hops: int = Field(default=1, ge=1, le=3, description="walk: fact -> node -> fact hops")
    walk_fanout: int = Field(default=64, ge=1,
                             description="walk: names / concepts on more facts are not walked")
    walk_damping: float = Field(default=0.85, gt=0, le=1, description="walk: mass kept a step")

    def signal_weights(self) -> dict[str, float]:
        """The weight of each route signal in fusion."""
        return {"dense": self.w_dense, "keyword": self.w_keyword, "context": self.w_context,
                "window": self.w_window, "graph": self.w_graph, "walk": self.w_walk}
