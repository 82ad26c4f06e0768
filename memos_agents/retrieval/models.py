"""What a search returns: routed hits, and how they were found (`explain`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from ..cube import MemCube, SearchHit
from ..reader import MemoryIntent, TimeRange
from .config import RetrievalConfig


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
    """A hit of the router: `score` is the fused relevance in (0, 1] (with the dense route
    alone: the cosine similarity), `dense` the cosine similarity (None when the dense route did
    not rank it), `context` the session turns around it when asked for (`window=`); those are
    context, not hits."""

    fused: float = 0.0
    dense: float | None = None
    routes: list[str] = Field(default_factory=list)
    graph_path: list[str] = Field(
        default_factory=list, description="how the graph reached it: the query's entity / "
        "concept nodes (`entity:<name>`, `concept:<key>`), then facts (ids) the walk passed")
    context: list[MemCube] = Field(default_factory=list)


class SearchResult(BaseModel):
    """`MemOS.explain(...)`: the hits and how they were found."""

    hits: list[SearchHit]
    explain: SearchExplain

    def __iter__(self) -> Any:  # type: ignore[override]
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i: int) -> SearchHit:
        return self.hits[i]


def elapsed_ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def stage_of(name: str, t0: float, found: Sequence[tuple[str, float]], top: int,
             detail: dict[str, Any] | None = None) -> Stage:
    """A stage that ranked `found` (id, score), best first; the first `top` are shown."""
    return Stage(
        name=name,
        took_ms=elapsed_ms(t0),
        total=len(found),
        candidates=[StageCandidate(id=c, score=round(float(s), 6), rank=r)
                    for r, (c, s) in enumerate(found[:top])],
        detail=detail or {},
    )
