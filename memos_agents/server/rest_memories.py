"""REST: memories (add, documents, search, get, list with a keyset cursor, update, history,
delete and purge). Every call runs the facade as the key's principal (`Caller.mem`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ..catalog import page_cursor
from ..cube import MemCube
from ..errors import InvalidInput
from ..mos import PurgeReceipt
from .rest_models import (
    AddDocument,
    AddMemories,
    CallerDep,
    Cubes,
    History,
    Hit,
    Page,
    SearchRequest,
    SearchResponse,
    UpdateMemory,
)

router = APIRouter(tags=["memories"])

MAX_PAGE = 1000  # memories a page of GET /v1/memories may hold

ScopeUser = Annotated[str | None, Query(description="the memory must be this user's")]


@router.post("/memories", status_code=201)
def add_memories(body: AddMemories, who: CallerDep) -> Cubes:
    """Remember a text or chat messages (fast: one memory per turn; fine: the facts a chat
    model extracts, when the server has one)."""
    messages = (body.messages if isinstance(body.messages, str)
                else [m.model_dump(exclude_none=True) for m in body.messages])
    vault = who.vault(body.vault)
    cubes = who.mem.add(
        messages, user_id=who.scope_user(body.user_id, vault, "add"), vault=vault,
        agent_id=body.agent_id, session_id=body.session_id, tags=body.tags, ttl=body.ttl,
        mode=body.mode, metadata=body.metadata, visibility=body.visibility,
    )
    return Cubes(items=cubes)


@router.post("/documents", status_code=201)
def add_document(body: AddDocument, who: CallerDep) -> Cubes:
    """Remember a document's text, split into chunks (one memory each)."""
    vault = who.vault(body.vault)
    cubes = who.mem.add_document(
        body.text, user_id=who.scope_user(body.user_id, vault, "add_document"), vault=vault,
        source=body.name, session_id=body.session_id, tags=body.tags,
    )
    return Cubes(items=cubes)


@router.post("/search")
def search(body: SearchRequest, who: CallerDep) -> SearchResponse:
    """The `k` memories that best answer `query`, best first, among those the key may read;
    `explain`: with every stage's candidates, the fused scores and the query's intent."""
    vault = who.vault(body.vault)
    op = "explain" if body.explain else "search"
    kw: dict[str, Any] = dict(
        user_id=who.scope_user(body.user_id, vault, op), vault=vault, k=body.k,
        mode=body.mode, routes=body.routes, tags=body.tags, session_id=body.session_id,
        agent_id=body.agent_id, window=body.window,
    )
    if body.explain:
        found = who.mem.explain(body.query, **kw)
        hits, explain = found.hits, found.explain
    else:
        hits, explain = who.mem.search(body.query, **kw), None
    return SearchResponse(
        hits=[Hit(id=h.id, score=h.score, content=h.cube.content, cube=h.cube,
                  routes=getattr(h, "routes", []), graph_path=getattr(h, "graph_path", []),
                  dense=getattr(h, "dense", None), context=getattr(h, "context", []))
              for h in hits],
        explain=explain,
    )


@router.get("/memories/{cube_id}")
def get_memory(cube_id: str, who: CallerDep, user_id: ScopeUser = None) -> MemCube:
    """One memory, if the key may read it."""
    who.reach(cube_id)
    return who.mem.get(cube_id, user_id=user_id)


@router.get("/memories")
def list_memories(
    who: CallerDep,
    user_id: Annotated[str | None, Query(description="whose memory (default: the key's)")] = None,
    vault: str | None = None,
    session_id: str | None = None,
    limit: int = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the page before")] = None,
) -> Page:
    """A user's live memories, oldest first, `limit` a page: `next_cursor` continues after the
    last one (a keyset cursor: stable while memories are added)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}")
    vault = who.vault(vault)
    got = who.mem.list(user_id=who.scope_user(user_id, vault, "list"), vault=vault,
                       session_id=session_id, limit=limit + 1, after=cursor)
    items = got[:limit]
    return Page(items=items, next_cursor=page_cursor(items[-1]) if len(got) > limit else None)


@router.patch("/memories/{cube_id}")
def update_memory(cube_id: str, body: UpdateMemory, who: CallerDep) -> MemCube:
    """Replace a memory's content as a new version (409 when `expected_version` is stale)."""
    who.reach(cube_id)
    return who.mem.update(cube_id, body.content, user_id=body.user_id,
                          expected_version=body.expected_version)


@router.get("/memories/{cube_id}/history")
def memory_history(cube_id: str, who: CallerDep, user_id: ScopeUser = None) -> History:
    """Every version of a memory, oldest first, with who changed it and when."""
    who.reach(cube_id)
    return History(items=who.mem.history(cube_id, user_id=user_id))


@router.delete("/memories/{cube_id}")
def delete_memory(
    cube_id: str,
    who: CallerDep,
    user_id: ScopeUser = None,
    purge: Annotated[bool, Query(description="erase it and every version, for good")] = False,
) -> MemCube | PurgeReceipt:
    """Soft delete (the memory becomes a tombstone, history keeps it); `purge=true` erases it
    from the catalog, the vector index, the graph and the blob folder, and returns a receipt."""
    who.reach(cube_id)
    if purge:
        return who.mem.purge(cube_id, user_id=user_id)
    return who.mem.delete(cube_id, user_id=user_id)
