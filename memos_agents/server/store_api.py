"""The LangGraph Platform store API (`/store/...`), backed by `MemOSStore`.

The requests and answers are those `langgraph_sdk`'s store client sends and reads (as served by
langgraph-api): `PUT /store/items` and `DELETE /store/items` answer 204; `GET /store/items`
(namespace as a dotted string, key, refresh_ttl) the item or JSON `null`; `POST
/store/items/search` `{"items": [...]}` with scores; `POST /store/namespaces`
`{"namespaces": [[...], ...]}`. Items carry namespace (a list), key, value, created_at and
updated_at (ISO 8601).

Each request runs a `MemOSStore` over the caller's MemOS view, so the store's gate decides:
the key's principal needs a role in the store's vault (reader to read, writer to put or
delete), and a key limited to other vaults reaches none of it. The optional `vault` query
parameter names the vault (default "langgraph"). A malformed namespace is a 400
`InvalidNamespace` error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field, StrictFloat, StrictInt

from ..errors import InvalidInput
from .auth import Caller, caller

if TYPE_CHECKING:
    from ..langgraph.store import MemOSStore

router = APIRouter(prefix="/store", tags=["store"])

CallerDep = Annotated[Caller, Depends(caller)]
VaultParam = Annotated[str | None, Query(description='the vault of the store ("langgraph")')]
T = TypeVar("T")


class InvalidNamespace(InvalidInput):
    """A namespace the store does not take (empty label, a period, a "langgraph" root...)."""


class PutItem(BaseModel):
    """Store or update an item."""

    namespace: list[str]
    key: str
    value: dict[str, Any]
    index: Literal[False] | list[str] | None = None
    ttl: StrictInt | StrictFloat | None = Field(None, description="minutes; null: no expiry")


class DeleteItem(BaseModel):
    """Delete an item."""

    namespace: list[str] = []
    key: str


class SearchItems(BaseModel):
    """Items under a namespace prefix: ranked by `query` when one is given, else newest first."""

    namespace_prefix: list[str] | None = None
    filter: dict[str, Any] | None = None
    limit: int = 10
    offset: int = 0
    query: str | None = None
    refresh_ttl: bool | None = None


class ListNamespaces(BaseModel):
    """The namespaces holding items, matched by prefix / suffix (`*` matches any label)."""

    prefix: list[str] | None = None
    suffix: list[str] | None = None
    max_depth: int | None = None
    limit: int = 100
    offset: int = 0


def _run(who: Caller, vault: str | None, call: Callable[[MemOSStore], T]) -> T:
    """`call` on the store of `vault` run as the caller; namespace errors as InvalidNamespace.
    LangGraph is imported here, so the rest of the server runs without it."""
    from langgraph.store.base import InvalidNamespaceError

    from ..langgraph.store import VAULT, MemOSStore

    store = MemOSStore(who.mem, vault=who.vault(vault or VAULT))
    try:
        return call(store)
    except InvalidNamespaceError as exc:
        raise InvalidNamespace(str(exc)) from exc


@router.put("/items", status_code=204, response_class=Response)
def put_item(body: PutItem, who: CallerDep, vault: VaultParam = None) -> Response:
    """Store or update an item (204)."""
    _run(who, vault, lambda s: s.put(tuple(body.namespace), body.key, body.value,
                                     index=body.index, ttl=body.ttl))
    return Response(status_code=204)


@router.get("/items")
def get_item(
    who: CallerDep,
    key: str,
    namespace: str = "",
    refresh_ttl: bool | None = None,
    vault: VaultParam = None,
) -> dict[str, Any] | None:
    """One item (namespace labels joined by periods), or null when there is none."""
    ns = tuple(namespace.split(".")) if namespace else ()
    item = _run(who, vault, lambda s: s.get(ns, key, refresh_ttl=refresh_ttl))
    return None if item is None else item.dict()


@router.delete("/items", status_code=204, response_class=Response)
def delete_item(body: DeleteItem, who: CallerDep, vault: VaultParam = None) -> Response:
    """Delete an item (204; deleting what is not there is fine)."""
    _run(who, vault, lambda s: s.delete(tuple(body.namespace), body.key))
    return Response(status_code=204)


@router.post("/items/search")
def search_items(
    body: SearchItems, who: CallerDep, vault: VaultParam = None
) -> dict[str, list[dict[str, Any]]]:
    """Items under a namespace prefix, filtered, ranked by the query when there is one."""
    items = _run(who, vault, lambda s: s.search(
        tuple(body.namespace_prefix or ()), query=body.query, filter=body.filter,
        limit=body.limit, offset=body.offset, refresh_ttl=body.refresh_ttl,
    ))
    return {"items": [i.dict() for i in items]}


@router.post("/namespaces")
def list_namespaces(
    body: ListNamespaces, who: CallerDep, vault: VaultParam = None
) -> dict[str, list[list[str]]]:
    """The namespaces that hold items, sorted, cut at `max_depth` labels."""
    found = _run(who, vault, lambda s: s.list_namespaces(
        prefix=None if body.prefix is None else tuple(body.prefix),
        suffix=None if body.suffix is None else tuple(body.suffix),
        max_depth=body.max_depth, limit=body.limit, offset=body.offset,
    ))
    return {"namespaces": [list(ns) for ns in found]}
