"""`MemOSRemoteStore`: a LangGraph `BaseStore` that is a memos-agents server's store API.

    graph = builder.compile(store=MemOSRemoteStore("http://127.0.0.1:8000", api_key="mk_..."))

An agent in another process uses the server's `MemOSStore` (`/store/...`, the LangGraph
Platform store API) as its store, over HTTP with httpx. The API key's principal decides what
it may reach; refusals come back as the `memos_agents.errors` classes (403 `PermissionDenied`,
and so is a missing or bad key (401); 400 `InvalidInput`, 404 `NotFound`, 409 `Conflict`...)
with the server's message, a namespace the store does not take as LangGraph's
`InvalidNamespaceError` (checked here before anything is sent), and a server that cannot be
reached as a `StoreError`.

A batch checks every op's namespace first, then sends its reads in order and then its writes
(the last put to a key wins), so reads see the store as it was before the batch's writes, as
with `MemOSStore`; each op is one request, so a batch is not one transaction. The server's
store takes at most one prefix and one suffix condition per `list_namespaces`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)
from memos_agents.errors import (
    Conflict,
    ExtractionError,
    IntegrityError,
    InvalidInput,
    MemOSError,
    NotFound,
    ScopeViolation,
    StoreError,
)
from memos_agents.governance import PermissionDenied

from .store import check_namespace

ERRORS: dict[str, type[Exception]] = {
    "InvalidInput": InvalidInput,
    "InvalidNamespace": InvalidNamespaceError,
    "PermissionDenied": PermissionDenied,
    "ScopeViolation": ScopeViolation,
    "NotFound": NotFound,
    "Conflict": Conflict,
    "IntegrityError": IntegrityError,
    "ExtractionError": ExtractionError,
    "StoreError": StoreError,
}
STATUS: dict[int, type[MemOSError]] = {
    401: PermissionDenied,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: InvalidInput,
}


@dataclass(frozen=True)
class Call:
    """One request of a batch, and the kind of op whose result its answer is."""

    method: str
    path: str
    kind: type[Op]
    params: dict[str, str] | None = None
    body: dict[str, Any] | None = None


def _call(op: Op) -> Call:
    """The request that runs `op` (its namespace checked as the server's store checks it)."""
    if isinstance(op, GetOp):
        ns = check_namespace(op.namespace)
        params = {"namespace": ".".join(ns), "key": op.key,
                  "refresh_ttl": "true" if op.refresh_ttl else "false"}
        return Call("GET", "/store/items", GetOp, params=params)
    if isinstance(op, SearchOp):
        body = {"namespace_prefix": list(check_namespace(op.namespace_prefix)),
                "filter": op.filter, "limit": op.limit, "offset": op.offset,
                "query": op.query, "refresh_ttl": op.refresh_ttl}
        return Call("POST", "/store/items/search", SearchOp, body=body)
    if isinstance(op, ListNamespacesOp):
        return Call("POST", "/store/namespaces", ListNamespacesOp, body=_list_body(op))
    if isinstance(op, PutOp):
        ns = list(check_namespace(op.namespace, write=True))
        if op.value is None:
            return Call("DELETE", "/store/items", PutOp, body={"namespace": ns, "key": op.key})
        body = {"namespace": ns, "key": op.key, "value": op.value, "index": op.index,
                "ttl": op.ttl}
        return Call("PUT", "/store/items", PutOp, body=body)
    raise InvalidInput(f"unknown operation type: {type(op).__name__}")


def _list_body(op: ListNamespacesOp) -> dict[str, Any]:
    body: dict[str, Any] = {"max_depth": op.max_depth, "limit": op.limit, "offset": op.offset}
    for cond in op.match_conditions or ():
        side = cond.match_type
        if side not in ("prefix", "suffix"):
            raise InvalidInput(f"unsupported match type {side!r}")
        if side in body:
            raise InvalidInput(f"the store API takes one {side} condition per list_namespaces")
        body[side] = list(check_namespace(cond.path))
    return body


def _plan(ops: list[Op]) -> tuple[list[tuple[int, Call]], list[Call]]:
    """The reads (with their op's index) in order, then the writes, the last per key."""
    reads: list[tuple[int, Call]] = []
    writes: dict[tuple[tuple[str, ...], str], Call] = {}
    for i, op in enumerate(ops):
        call = _call(op)
        if isinstance(op, PutOp):
            key = (tuple(op.namespace), op.key)
            writes.pop(key, None)
            writes[key] = call
        else:
            reads.append((i, call))
    return reads, list(writes.values())


def _result(kind: type[Op], data: Any) -> Result:
    """The op's result from the server's JSON answer."""
    if kind is GetOp:
        return None if data is None else Item(
            value=data["value"], key=data["key"], namespace=tuple(data["namespace"]),
            created_at=data["created_at"], updated_at=data["updated_at"],
        )
    if kind is SearchOp:
        return [
            SearchItem(tuple(i["namespace"]), i["key"], i["value"], i["created_at"],
                       i["updated_at"], i.get("score"))
            for i in data["items"]
        ]
    if kind is ListNamespacesOp:
        return [tuple(ns) for ns in data["namespaces"]]
    return None


def _answer(call: Call, response: httpx.Response) -> Result:
    """The op's result, or the server's refusal raised as the error class it names."""
    if response.is_success:
        return _result(call.kind, response.json() if response.content else None)
    try:
        err = response.json()
        name, message = str(err.get("error", "")), str(err.get("message", ""))
    except (ValueError, AttributeError):
        name, message = "", response.text
    kind = ERRORS.get(name) or STATUS.get(response.status_code)
    if kind is None:
        kind = StoreError if response.status_code >= 500 else InvalidInput
    raise kind(message or f"{call.method} {call.path}: HTTP {response.status_code}")


class MemOSRemoteStore(BaseStore):
    """A LangGraph store served by a memos-agents server (`memos-agents serve`) over HTTP.

    `api_key`: the bearer key (`memos-agents key create`); `vault`: the server-side vault of
    the store (the server's default, "langgraph", when None). Close it when done (`close()`,
    `aclose()`, or use it as a context manager).
    """

    supports_ttl = True

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        vault: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.vault = vault
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout
        self._client = httpx.Client(base_url=self.url, headers=self._headers, timeout=timeout)
        self._aclient: httpx.AsyncClient | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None

    def _params(self, call: Call) -> dict[str, str] | None:
        extra = {"vault": self.vault} if self.vault else {}
        return {**(call.params or {}), **extra} or None

    def _send(self, call: Call) -> Result:
        try:
            response = self._client.request(
                call.method, call.path, params=self._params(call), json=call.body
            )
        except httpx.HTTPError as exc:
            raise StoreError(f"cannot reach the memos-agents server at {self.url}: {exc}") from exc
        return _answer(call, response)

    def _async_client(self) -> httpx.AsyncClient:
        """The async client of the running event loop (a new one for a new loop)."""
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            self._aclient = httpx.AsyncClient(
                base_url=self.url, headers=self._headers, timeout=self._timeout
            )
            self._aloop = loop
        return self._aclient

    async def _asend(self, call: Call) -> Result:
        try:
            response = await self._async_client().request(
                call.method, call.path, params=self._params(call), json=call.body
            )
        except httpx.HTTPError as exc:
            raise StoreError(f"cannot reach the memos-agents server at {self.url}: {exc}") from exc
        return _answer(call, response)

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ops, results in op order: reads first, then writes (the last put per key)."""
        ops = list(ops)
        reads, writes = _plan(ops)
        results: list[Result] = [None] * len(ops)
        for i, call in reads:
            results[i] = self._send(call)
        for call in writes:
            self._send(call)
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """`batch` with the async client."""
        ops = list(ops)
        reads, writes = _plan(ops)
        results: list[Result] = [None] * len(ops)
        for i, call in reads:
            results[i] = await self._asend(call)
        for call in writes:
            await self._asend(call)
        return results

    def close(self) -> None:
        """Close the sync client (and forget the async one)."""
        self._client.close()
        self._aclient = None

    async def aclose(self) -> None:
        """Close both clients."""
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None
        self._client.close()

    def __enter__(self) -> MemOSRemoteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> MemOSRemoteStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["MemOSRemoteStore"]
