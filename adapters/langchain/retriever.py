"""`MemOSRetriever`: a LangChain retriever over one user's memories."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from memos_agents.cube import SearchHit
from memos_agents.mos import MemOS


def hit_document(hit: SearchHit) -> Document:
    """A search hit as a Document, with the cube's provenance in its metadata."""
    c = hit.cube
    return Document(
        id=c.id,
        page_content=c.content,
        metadata={
            "id": c.id,
            "score": hit.score,
            "user_id": c.scope.user_id,
            "vault": c.scope.vault,
            "session_id": c.scope.session_id,
            "agent_id": c.scope.agent_id,
            "speaker": c.provenance.speaker,
            "source_kind": c.provenance.source_kind.value,
            "source_refs": c.provenance.source_refs,
            "version": c.lifecycle.version,
            "created_at": c.lifecycle.created_at.isoformat(),
            "valid_from": c.lifecycle.valid_from.isoformat() if c.lifecycle.valid_from else None,
            "tags": c.organisation.tags,
        },
    )


class MemOSRetriever(BaseRetriever):
    """Retrieves the `k` memories of `user_id` most relevant to the query.
    `invoke(query, k=...)` overrides `k` for one call."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    mem: MemOS
    user_id: str
    k: int = 4
    vault: str | None = None
    session_id: str | None = None
    tags: list[str] | None = None

    def _search_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "k": kwargs.get("k", self.k),
            "vault": self.vault,
            "session_id": self.session_id,
            "tags": self.tags,
        }

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return [hit_document(h) for h in self.mem.search(query, **self._search_kwargs(kwargs))]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        hits = await self.mem.asearch(query, **self._search_kwargs(kwargs))
        return [hit_document(h) for h in hits]
