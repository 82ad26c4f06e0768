"""MCP: the memory operations as MCP tools, over streamable HTTP (`/mcp` in the server app) and
over stdio (`memos-agents mcp`).

Every tool runs the facade as the caller's view (`Caller.mem`), so the library's gate decides
and audits each call; a key limited to some vaults reaches no other vault. Over HTTP the bearer
key of each request is resolved by the server's `Authenticator` (401 without a valid one, open
mode as in REST); over stdio the key is resolved once, at start. A refused or failed call is an
MCP tool error whose text ends `<MemOSError class name>: <message>`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field
from starlette.datastructures import Headers

from ..errors import MemOSError, NotFound
from .auth import Authenticator, Caller, Unauthenticated

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from starlette.applications import Starlette
    from starlette.types import ASGIApp, Receive, Scope, Send

    from ..cube import MemCube
    from ..mos import MemOS

PATH = "/mcp"
INSTRUCTIONS = (
    "Long-term memory. add_memory stores what should be remembered, search_memory finds it "
    "again (best first); memories are cubes with an id, content and version. user_id defaults "
    "to the user your key stands for."
)

CALLER: ContextVar[Caller | None] = ContextVar("memos_mcp_caller", default=None)

UserId = Annotated[str | None, Field(
    description="whose memory the call is about (default: the user your key stands for)")]
Vault = Annotated[str | None, Field(description="the vault (default: the data dir's vault)")]


def cube_json(cube: MemCube) -> dict[str, Any]:
    """What a tool says about one cube."""
    return {
        "id": cube.id,
        "content": cube.content,
        "form": cube.form.value,
        "state": cube.lifecycle.state.value,
        "version": cube.lifecycle.version,
        "vault": cube.scope.vault,
        "user_id": cube.scope.user_id,
        "agent_id": cube.scope.agent_id,
        "session_id": cube.scope.session_id,
        "tags": list(cube.organisation.tags),
        "visibility": cube.governance.visibility.value,
        "created_at": cube.lifecycle.created_at.isoformat(),
        "updated_at": cube.lifecycle.updated_at.isoformat(),
    }


@contextmanager
def calling() -> Iterator[Caller]:
    """The caller of this tool call; a MemOSError inside becomes the tool's error."""
    try:
        who = CALLER.get()
        if who is None:
            raise Unauthenticated("no caller: this MCP server was started without a key check")
        yield who
    except MemOSError as exc:
        raise ToolError(f"{type(exc).__name__}: {exc}") from exc


def add_memory(
    content: str,
    user_id: UserId = None,
    vault: Vault = None,
    session_id: str | None = None,
    agent_id: str | None = None,
    tags: list[str] | None = None,
    mode: Literal["fast", "fine"] = "fast",
    visibility: Literal["private", "shared", "public"] = "private",
) -> dict[str, Any]:
    """Remember a text. fast stores it as one memory; fine stores the facts a chat model
    extracts from it (when the server has one). Returns the memories written."""
    with calling() as who:
        vault = who.vault(vault)
        cubes = who.mem.add(content, user_id=who.scope_user(user_id, vault, "add"), vault=vault,
                            session_id=session_id, agent_id=agent_id, tags=tags, mode=mode,
                            visibility=visibility)
        return {"memories": [cube_json(c) for c in cubes]}


def search_memory(
    query: str,
    user_id: UserId = None,
    vault: Vault = None,
    k: int = 5,
    session_id: str | None = None,
    agent_id: str | None = None,
    tags: list[str] | None = None,
    mode: Literal["hybrid", "dense"] = "hybrid",
    window: int = 0,
) -> dict[str, Any]:
    """The k memories that best answer the query, best first, each with its score (hybrid:
    dense + keyword + graph routes fused; dense: cosine alone). `window`: that many turns of
    the same session either side of each hit, as its context."""
    with calling() as who:
        vault = who.vault(vault)
        hits = who.mem.search(query, user_id=who.scope_user(user_id, vault, "search"),
                              vault=vault, k=k,
                              session_id=session_id, agent_id=agent_id, tags=tags, mode=mode,
                              window=window)
        out = []
        for h in hits:
            item = {**cube_json(h.cube), "score": h.score}
            if h.context:
                item["context"] = [cube_json(c) for c in h.context]
            out.append(item)
        return {"hits": out}


def get_memory(cube_id: str, user_id: UserId = None) -> dict[str, Any]:
    """One memory by id (`user_id`: refuse it unless it belongs to that user)."""
    with calling() as who:
        who.reach(cube_id)
        return cube_json(who.mem.get(cube_id, user_id=user_id))


def list_memories(
    user_id: UserId = None,
    vault: Vault = None,
    session_id: str | None = None,
    include_deleted: bool = False,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """A user's memories in a vault (optionally one session), oldest first, a page at a time."""
    with calling() as who:
        vault = who.vault(vault)
        cubes = who.mem.list(user_id=who.scope_user(user_id, vault, "list"), vault=vault,
                             session_id=session_id, include_deleted=include_deleted,
                             limit=limit, offset=offset)
        return {"memories": [cube_json(c) for c in cubes]}


def update_memory(
    cube_id: str,
    content: str,
    user_id: UserId = None,
    tags: list[str] | None = None,
    expected_version: int | None = None,
) -> dict[str, Any]:
    """Replace a memory's content as a new version (earlier ones stay in memory_history).
    With `expected_version` (the version you read), a Conflict error if it changed since."""
    with calling() as who:
        who.reach(cube_id)
        return cube_json(who.mem.update(cube_id, content, user_id=user_id, tags=tags,
                                        expected_version=expected_version))


def delete_memory(cube_id: str, user_id: UserId = None) -> dict[str, Any]:
    """Delete a memory: it is no longer found (its versions stay in memory_history)."""
    with calling() as who:
        who.reach(cube_id)
        return cube_json(who.mem.delete(cube_id, user_id=user_id))


def memory_history(cube_id: str, user_id: UserId = None) -> dict[str, Any]:
    """Every version of a memory, oldest first, with who changed it, when and how."""
    with calling() as who:
        who.reach(cube_id)
        versions = who.mem.history(cube_id, user_id=user_id)
        return {"versions": [
            {"version": v.version, "op": v.op, "changed_by": v.changed_by,
             "changed_at": v.changed_at.isoformat(), "content": v.cube.content,
             "state": v.cube.lifecycle.state.value}
            for v in versions
        ]}


def publish(
    channel: str,
    content: str | None = None,
    cube_ids: list[str] | None = None,
    user_id: UserId = None,
    vault: Vault = None,
    agent_id: str | None = None,
    session_id: str | None = None,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """Publish to a channel: `content` becomes a new shared memory; `cube_ids` are existing
    shared or public memories of the user. Subscribers receive them with `poll`."""
    with calling() as who:
        vault = who.vault(vault)
        sent = who.mem.publish(channel, content, user_id=who.scope_user(user_id, vault, "publish"),
                               cube_ids=cube_ids or (), vault=vault,
                               agent_id=agent_id, session_id=session_id, tags=tags)
        return {"deliveries": [{"seq": d.seq, "published_by": d.published_by, **cube_json(d.cube)}
                               for d in sent]}


def poll(
    channel: str,
    subscriber: str,
    limit: int = 20,
    ack: bool = True,
    start: Literal["earliest", "latest"] = "earliest",
) -> dict[str, Any]:
    """What arrived on a channel for `subscriber` since its last ack, oldest first (subscribes
    it on first use, from `start`). `ack`: mark them received, so the next poll skips them."""
    with calling() as who:
        try:
            got = who.mem.poll(channel, subscriber, limit=limit)
        except NotFound:  # not subscribed yet
            who.mem.subscribe(channel, subscriber, start=start)
            got = who.mem.poll(channel, subscriber, limit=limit)
        if ack and got:
            who.mem.ack(channel, subscriber, got[-1].seq)
        return {"deliveries": [
            {"seq": d.seq, "published_by": d.published_by,
             "published_at": d.published_at.isoformat(), **cube_json(d.cube)}
            for d in got
        ], "acked": ack and bool(got)}


def graph(user_id: UserId = None, vault: Vault = None) -> dict[str, Any]:
    """The topic -> concept -> fact hierarchy of a user's memory: `text` (a tree to read) and
    `topics` (the same as data)."""
    with calling() as who:
        vault = who.vault(vault)
        tree = who.mem.graph(user_id=who.scope_user(user_id, vault, "graph"), vault=vault)
        return {"text": tree.render(), "topics": tree.model_dump(mode="json")["topics"]}


TOOLS: tuple[Callable[..., dict[str, Any]], ...] = (
    add_memory, search_memory, get_memory, list_memories, update_memory, delete_memory,
    memory_history, publish, poll, graph,
)


def build_server() -> MCPServer:
    """An MCP server holding the memory tools (the caller comes from `CALLER`)."""
    from .. import __version__

    root = logging.getLogger()
    before = set(root.handlers)
    server = MCPServer("memos-agents", version=__version__, instructions=INSTRUCTIONS,
                       log_level="WARNING")
    for handler in set(root.handlers) - before:  # the SDK's basicConfig: keep it to warnings,
        handler.setLevel(logging.WARNING)  # or loggers set to DEBUG (bm25s) print every search
    for tool in TOOLS:
        server.add_tool(tool, structured_output=True)
    return server


class KeyCheck:
    """ASGI: the caller of each HTTP request from its bearer key (the server's `Authenticator`),
    put in `CALLER` for the tools; Unauthenticated (the app's JSON 401) without a valid key."""

    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        header = Headers(scope=scope).get("authorization")
        who = await anyio.to_thread.run_sync(self.auth.header, header)
        token = CALLER.set(who)
        try:
            await self.app(scope, receive, send)
        finally:
            CALLER.reset(token)


def mount(app: Starlette, auth: Authenticator) -> StreamableHTTPSessionManager:
    """Serve the tools at `/mcp` of `app` (streamable HTTP, stateless, JSON responses, so any
    worker answers any request); returns the session manager the app's lifespan must run.
    Without `auth.required` (open mode, loopback) only loopback Host headers are accepted (DNS
    rebinding); with it every request needs a key and any host is served."""
    server = build_server()
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False) \
        if auth.required else None
    http = server.streamable_http_app(streamable_http_path=PATH, stateless_http=True,
                                      json_response=True, transport_security=security)
    app.add_route(PATH, KeyCheck(http, auth), include_in_schema=False)
    return server.session_manager


def serve_stdio(mem: MemOS, key: str | None) -> None:
    """Serve the tools on stdin/stdout as the principal of `key` (open mode: system while the
    data dir has no key); Unauthenticated if the key is not valid."""
    from ..keys import KeyStore

    who = Authenticator(mem, KeyStore(mem.vault.catalog.engine)).token(key)
    CALLER.set(who)
    anyio.run(build_server().run_stdio_async)


__all__ = ["CALLER", "PATH", "TOOLS", "KeyCheck", "build_server", "mount", "serve_stdio"]
