"""MCP: the memory tools over streamable HTTP (`/mcp` of the server app, with the SDK's own
client and a bearer key) and over stdio (`memos-agents mcp`), each call gated as its caller."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from typer.testing import CliRunner

from memos_agents.cli import app as cli
from memos_agents.keys import KeyStore
from memos_agents.server import create_app
from memos_agents.server.auth import ANY_KEY_TTL

TOOLS = {"add_memory", "search_memory", "get_memory", "list_memories", "update_memory",
         "delete_memory", "memory_history", "publish", "poll", "graph"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def url(mem) -> Iterator[str]:
    """The real app under uvicorn on a free loopback port; its MCP endpoint."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app=create_app(mem), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(10)


@asynccontextmanager
async def session(url: str, secret: str | None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as s,
    ):
        await s.initialize()
        yield s


async def call(s: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    r = await s.call_tool(tool, args)
    assert not r.is_error, r.content
    return r.structured_content


async def refused(s: ClientSession, tool: str, **args: Any) -> str:
    """The MemOSError name of a failed call ("Error executing tool <tool>: <name>: <message>")."""
    r = await s.call_tool(tool, args)
    assert r.is_error, r.structured_content
    prefix = f"Error executing tool {tool}: "
    assert r.content[0].text.startswith(prefix), r.content[0].text
    return r.content[0].text.removeprefix(prefix).split(":", 1)[0]


async def test_every_tool_over_http_as_the_keys_principal(mem, url) -> None:
    keys = KeyStore(mem.vault.catalog.engine)
    _, alice = keys.create("user:alice")
    _, bob = keys.create("user:bob")
    async with session(url, alice) as s:
        assert {t.name for t in (await s.list_tools()).tools} >= TOOLS
        added = await call(s, "add_memory", content="Alice keeps bees on her roof in Lyon",
                           session_id="s1", tags=["hobby"])
        cube = added["memories"][0]
        assert cube["user_id"] == "alice" and cube["tags"] == ["hobby"]
        await call(s, "add_memory", content="Alice's sister lives in Porto", session_id="s1")
        hits = (await call(s, "search_memory", query="who keeps bees?", k=2))["hits"]
        assert hits[0]["id"] == cube["id"] and hits[0]["score"] > 0
        assert (await call(s, "get_memory", cube_id=cube["id"]))["content"] == cube["content"]
        listed = await call(s, "list_memories", session_id="s1")
        assert len(listed["memories"]) == 2
        new = await call(s, "update_memory", cube_id=cube["id"], expected_version=1,
                         content="Alice keeps bees and hens on her roof in Lyon")
        assert new["version"] == 2
        assert await refused(s, "update_memory", cube_id=cube["id"], content="x",
                             expected_version=1) == "Conflict"
        versions = (await call(s, "memory_history", cube_id=cube["id"]))["versions"]
        assert [v["version"] for v in versions] == [1, 2]
        tree = await call(s, "graph")
        assert "alice" in tree["text"] and isinstance(tree["topics"], list)
        sent = (await call(s, "publish", channel="news", content="the hive swarmed"))["deliveries"]
        assert sent[0]["published_by"] == "user:alice" and sent[0]["visibility"] == "shared"
        got = await call(s, "poll", channel="news", subscriber="alice-inbox")
        assert [d["content"] for d in got["deliveries"]] == ["the hive swarmed"] and got["acked"]
        assert (await call(s, "poll", channel="news", subscriber="alice-inbox"))["deliveries"] == []
        assert (await call(s, "delete_memory", cube_id=cube["id"]))["state"] == "deleted"
        hits = (await call(s, "search_memory", query="who keeps bees?"))["hits"]
        assert cube["id"] not in [h["id"] for h in hits]
    bob_cube = mem.add("Bob's PIN is 4711", user_id="bob")[0]
    async with session(url, alice) as s:
        for tool, args in (("get_memory", {"cube_id": bob_cube.id}),
                           ("update_memory", {"cube_id": bob_cube.id, "content": "owned"}),
                           ("delete_memory", {"cube_id": bob_cube.id}),
                           ("memory_history", {"cube_id": bob_cube.id}),
                           ("add_memory", {"content": "planted", "user_id": "bob"}),
                           ("graph", {"user_id": "bob"}),
                           ("search_memory", {"query": "PIN", "user_id": "bob"}),
                           ("list_memories", {"user_id": "bob"}),
                           ("publish", {"channel": "news", "content": "x", "user_id": "bob"})):
            assert await refused(s, tool, **args) == "PermissionDenied", tool
    assert mem.get(bob_cube.id).content == "Bob's PIN is 4711"
    assert [c.id for c in mem.list(user_id="bob")] == [bob_cube.id]
    async with session(url, bob) as s:
        assert (await call(s, "get_memory", cube_id=bob_cube.id))["content"] == bob_cube.content
        assert await refused(s, "poll", channel="news",
                             subscriber="alice-inbox") == "PermissionDenied"
    _, elsewhere = keys.create("user:alice", vaults=["other"])
    async with session(url, elsewhere) as s:  # a key limited to another vault reaches none here
        assert await refused(s, "list_memories") == "PermissionDenied"
        assert await refused(s, "get_memory", cube_id=added["memories"][0]["id"]) \
            == "PermissionDenied"
        assert (await call(s, "add_memory", content="in the other vault", vault="other")
                )["memories"][0]["vault"] == "other"
    denied = [e for e in mem.audit_log() if e.outcome == "denied" and e.principal == "user:alice"]
    assert {"add", "get", "update", "history", "graph"} <= {e.op for e in denied}


async def test_open_mode_then_no_key_or_a_bad_key_is_refused(mem, url) -> None:
    async with session(url, None) as s:  # no key exists yet: system, loopback only
        added = await call(s, "add_memory", content="Zoe plays the oboe", user_id="zoe")
        assert added["memories"][0]["user_id"] == "zoe"
        assert await refused(s, "add_memory", content="whose?") == "InvalidInput"
    async with httpx2.AsyncClient() as http:
        r = await http.post(url, headers={"Host": "evil.example", "Accept": "application/json"},
                            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert r.status_code in (400, 421)  # DNS rebinding: an open server answers loopback names
    KeyStore(mem.vault.catalog.engine).create("user:alice")
    time.sleep(ANY_KEY_TTL + 0.1)  # the authenticator looks for keys again after its TTL
    for secret in (None, "mk_not_a_key"):
        async with httpx2.AsyncClient() as http:
            headers = {"Authorization": f"Bearer {secret}"} if secret else {}
            r = await http.post(url, headers={**headers, "Accept": "application/json"},
                                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert r.status_code == 401 and r.json()["error"] == "Unauthenticated"
        assert r.headers["www-authenticate"] == "Bearer"
        with pytest.raises(Exception):  # noqa: B017 - the SDK client fails on the 401
            async with session(url, secret) as s:
                await s.list_tools()


def _console_script() -> str:
    path = Path(sys.executable).with_name("memos-agents")
    return str(path) if path.exists() else "memos-agents"


async def test_stdio_command_serves_the_tools_as_the_keys_principal(mem, data_dir) -> None:
    _, carol = KeyStore(mem.vault.catalog.engine).create("user:carol")
    mem.close()  # the subprocess opens the same data dir
    params = StdioServerParameters(
        command=_console_script(), args=["mcp", "--dir", str(data_dir)],
        # the deployment's stores (MEMOS_CATALOG_URL, ... under --deployment=scaleout) and model
        env={**{k: v for k, v in os.environ.items() if k.startswith("MEMOS_")},
             "HF_HUB_OFFLINE": "1", "MEMOS_SCHEDULER": "0", "MEMOS_API_KEY": carol},
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        assert {t.name for t in (await s.list_tools()).tools} >= TOOLS
        added = (await call(s, "add_memory", content="Carol rows on the Thames"))["memories"]
        assert added[0]["user_id"] == "carol"
        hits = (await call(s, "search_memory", query="who rows?"))["hits"]
        assert hits[0]["id"] == added[0]["id"]
        assert await refused(s, "add_memory", content="x", user_id="dave") == "PermissionDenied"
    bad = CliRunner().invoke(cli, ["mcp", "--dir", str(data_dir), "--key", "mk_not_a_key"])
    assert bad.exit_code == 1 and "API key" in bad.output
