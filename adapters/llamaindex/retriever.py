"""`MemOSRetriever`: a user's MemOS memories as a llama-index retriever.

    engine = CondensePlusContextChatEngine.from_defaults(
        retriever=MemOSRetriever(mem, user_id="alice"), llm=llm)

Each hit becomes `NodeWithScore(TextNode(id_=cube.id, text=cube.content), score=cosine)`, best
first, with the cube's scope and provenance as node metadata: user_id, agent_id, session_id,
vault, source_kind, source_refs, speaker, role, created_at, valid_from (ISO strings), version,
tags. Only `valid_from` and the speaker or role are shown to the LLM with the text; no metadata
is embedded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from memos_agents.cube import SearchHit
from memos_agents.mos import MemOS

_SHOWN_TO_LLM = frozenset({"speaker", "role", "valid_from"})


def hit_to_node(hit: SearchHit) -> NodeWithScore:
    """A search hit as a scored text node carrying the cube's provenance."""
    cube = hit.cube
    meta: dict[str, Any] = {
        "user_id": cube.scope.user_id,
        "agent_id": cube.scope.agent_id,
        "session_id": cube.scope.session_id,
        "vault": cube.scope.vault,
        "source_kind": cube.provenance.source_kind.value,
        "source_refs": list(cube.provenance.source_refs),
        "speaker": cube.provenance.speaker,
        "role": cube.provenance.role,
        "created_at": cube.lifecycle.created_at.isoformat(),
        "valid_from": cube.lifecycle.valid_from.isoformat() if cube.lifecycle.valid_from else None,
        "version": cube.lifecycle.version,
        "tags": list(cube.organisation.tags),
    }
    node = TextNode(
        id_=cube.id,
        text=cube.content,
        metadata=meta,
        excluded_llm_metadata_keys=[
            key for key, value in meta.items() if key not in _SHOWN_TO_LLM or value is None
        ],
        excluded_embed_metadata_keys=list(meta),
    )
    return NodeWithScore(node=node, score=hit.score)


class MemOSRetriever(BaseRetriever):
    """Retrieves the `k` memories of one user most similar to the query."""

    def __init__(
        self,
        mem: MemOS,
        user_id: str,
        *,
        k: int = 5,
        vault: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        tags: Sequence[str] | None = None,
        min_score: float | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        """`agent_id`, `session_id` and `tags` narrow the search; by default it spans the user's
        whole memory in the vault."""
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.mem = mem
        self._search: dict[str, Any] = {
            "user_id": user_id,
            "k": k,
            "vault": vault,
            "agent_id": agent_id,
            "session_id": session_id,
            "tags": tags,
            "min_score": min_score,
        }

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if not query_bundle.query_str.strip():
            return []
        return [hit_to_node(h) for h in self.mem.search(query_bundle.query_str, **self._search)]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if not query_bundle.query_str.strip():
            return []
        hits = await self.mem.asearch(query_bundle.query_str, **self._search)
        return [hit_to_node(h) for h in hits]
