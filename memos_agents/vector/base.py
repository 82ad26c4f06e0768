"""The `VectorIndex` protocol: dense search over plaintext cubes, partitioned by scope.

Each (vault, user_id) scope is its own partition, so a search can only ever see the
caller's own vectors, and needs no metadata filter to get there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field


class VectorRecord(BaseModel):
    id: str
    embedding: list[float]
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)


@runtime_checkable
class VectorIndex(Protocol):
    def upsert(self, vault: str, user_id: str, records: Sequence[VectorRecord]) -> None: ...

    def delete(self, vault: str, user_id: str, ids: Sequence[str]) -> None: ...

    def query(
        self,
        vault: str,
        user_id: str,
        embedding: Sequence[float],
        n: int,
        where: dict[str, Any] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[tuple[str, float]]:
        """Ids with cosine similarity, best first (among `ids` only, when given)."""
        ...

    def embeddings(
        self, vault: str, user_id: str, ids: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Stored vectors of this scope (all, or those of `ids`), by id."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...
