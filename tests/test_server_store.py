"""The server's LangGraph Platform store API (`/store/...`) and `MemOSRemoteStore`.

One real server (uvicorn on a free loopback port, in a thread) over one real MemOS serves the
whole module; each test works in its own vault or namespaces. The LangGraph SDK's own clients
(async and sync) talk to it; the store's gate, run as the key's principal, decides; and the
shared `BaseStore` behaviour tests of `test_langgraph_store.py` (the ones that need no
store-side index config) run again against `MemOSRemoteStore`.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypedDict

import httpx
import pytest
import uvicorn
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import InvalidNamespaceError
from langgraph_sdk import get_client, get_sync_client
from langgraph_sdk.errors import PermissionDeniedError
from memos_agents.langgraph import MemOSRemoteStore, MemOSStore

from memos_agents import MemOS
from memos_agents.errors import InvalidInput, StoreError
from memos_agents.governance import PermissionDenied
from memos_agents.keys import KeyStore
from memos_agents.server import create_app
from tests.test_langgraph_store import (  # noqa: F401  (collected here, run on the remote store)
    test_async_api,
    test_batch_get_put_and_delete_ops,
    test_batch_list_namespaces_ops,
    test_batch_order,
    test_batch_search_ops,
    test_exact_value_round_trip,
    test_filter_nested_values_and_lists,
    test_filter_operators,
    test_list_namespaces,
    test_namespace_segment_boundaries,
    test_put_get_update_delete,
    test_put_rejects_bad_namespaces,
    test_reads_reject_bad_labels,
    test_reads_see_the_state_before_the_batch_and_the_last_put_wins,
    test_search_without_query,
)

ALICE = ("users", "alice")


@dataclass
class Served:
    mem: MemOS
    url: str
    keys: dict[str, str]  # name -> secret

    def sdk(self, who: str):
        return get_client(url=self.url, headers={"Authorization": f"Bearer {self.keys[who]}"})

    def sync_sdk(self, who: str):
        return get_sync_client(url=self.url,
                               headers={"Authorization": f"Bearer {self.keys[who]}"})


def _start(mem: MemOS) -> tuple[uvicorn.Server, threading.Thread, str]:
    config = uvicorn.Config(create_app(mem), host="127.0.0.1", port=0, log_level="warning",
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def served(tmp_path_factory, embedder) -> Iterator[Served]:
    from memos_agents.graph.falkordb_server import stop_server

    data_dir: Path = tmp_path_factory.mktemp("server-store") / "memos"
    mem = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30)
    keys = KeyStore(mem.vault.catalog.engine)
    secrets = {
        "alice": keys.create("user:alice")[1],
        "bob": keys.create("user:bob")[1],
        "carol": keys.create("user:carol")[1],
        "alice-default-only": keys.create("user:alice", vaults=["default"])[1],
        "tester": keys.create("agent:tester")[1],
    }
    mem.grant_role("langgraph", "user:alice", "writer")
    mem.grant_role("langgraph", "user:carol", "reader")
    server, thread, url = _start(mem)
    try:
        yield Served(mem, url, secrets)
    finally:
        server.should_exit = True
        thread.join(15)
        mem.close()
        stop_server(data_dir / "graph")


@pytest.fixture
def store(served: Served) -> Iterator[MemOSRemoteStore]:
    """A remote store in a fresh vault of its own, where the tester's key may write."""
    vault = f"t{uuid.uuid4().hex[:12]}"
    served.mem.grant_role(vault, "agent:tester", "writer")
    with MemOSRemoteStore(served.url, api_key=served.keys["tester"], vault=vault) as remote:
        yield remote


def _snapshot(mem: MemOS, ns: tuple[str, ...], key: str) -> list[tuple[int, str, object]]:
    cid = MemOSStore(mem).cube_id(ns, key)
    return [(h.version, h.op, h.cube.metadata.get("value")) for h in mem.history(cid)]


# --- the LangGraph SDK's clients ---------------------------------------------------------------


async def test_sdk_round_trip(served: Served) -> None:
    client = served.sdk("alice").store
    ns = [*ALICE, "sdk"]
    assert await client.put_item(ns, "profile", {"name": "Alice", "likes": "spicy ramen"}) is None
    await client.put_item(ns, "trip", {"text": "a trip to Kyoto in spring"}, index=["text"])
    await client.put_item(ns, "short", {"text": "gone soon"}, ttl=5)
    item = await client.get_item(ns, "profile")
    assert (item["namespace"], item["key"]) == (ns, "profile")
    assert item["value"] == {"name": "Alice", "likes": "spicy ramen"}
    assert datetime.fromisoformat(item["created_at"]).tzinfo is not None
    assert item["updated_at"] == item["created_at"]
    assert await client.get_item(ns, "nothing here") is None

    found = await client.search_items(ns, query="travel to Japan")
    assert found["items"][0]["key"] == "trip"
    assert all(isinstance(i["score"], float) for i in found["items"])
    listed = await client.search_items(ns, filter={"name": "Alice"})
    assert [(i["key"], i["score"]) for i in listed["items"]] == [("profile", None)]
    page = await client.search_items(ns, limit=1, offset=1)  # newest first without a query
    assert [i["key"] for i in page["items"]] == ["trip"]
    assert await client.list_namespaces(prefix=ns) == {"namespaces": [ns]}
    assert await client.list_namespaces(prefix=list(ALICE), max_depth=2) == {
        "namespaces": [list(ALICE)]
    }

    await client.put_item(ns, "profile", {"name": "Alice", "likes": "udon"})
    updated = await client.get_item(ns, "profile")
    assert updated["value"]["likes"] == "udon" and updated["updated_at"] > item["updated_at"]
    assert await client.delete_item(ns, "profile") is None
    assert await client.get_item(ns, "profile") is None
    assert [op for _, op, _ in _snapshot(served.mem, tuple(ns), "profile")] == [
        "create", "update", "delete"
    ]
    local = MemOSStore(served.mem)  # the server's items are the library store's items
    assert local.get(tuple(ns), "trip").value == {"text": "a trip to Kyoto in spring"}
    assert local.get(tuple(ns), "short").value == {"text": "gone soon"}


def test_sync_sdk_client_and_the_vault_parameter(served: Served) -> None:
    vault = f"s{uuid.uuid4().hex[:12]}"
    served.mem.grant_role(vault, "agent:tester", "writer")
    client = served.sync_sdk("tester").store
    at = {"vault": vault}
    client.put_item(["notes"], "n1", {"text": "water the plants"}, params=at)
    assert client.get_item(["notes"], "n1", params=at)["value"] == {"text": "water the plants"}
    with pytest.raises(PermissionDeniedError):  # the default vault, where it has no role
        client.get_item(["notes"], "n1")
    hits = client.search_items(["notes"], query="gardening", params=at)["items"]
    assert [h["key"] for h in hits] == ["n1"]
    assert client.list_namespaces(params=at) == {"namespaces": [["notes"]]}
    client.delete_item(["notes"], "n1", params=at)
    assert client.get_item(["notes"], "n1", params=at) is None
    assert MemOSStore(served.mem, vault=vault).list_namespaces() == []


async def test_the_keys_principal_decides_and_a_refusal_changes_nothing(served: Served) -> None:
    ns = [*ALICE, "private"]
    await served.sdk("alice").store.put_item(ns, "diary", {"text": "alice's secret"})
    before = _snapshot(served.mem, tuple(ns), "diary")
    bob = served.sdk("bob").store  # no role in the store's vault
    carol = served.sdk("carol").store  # a reader there
    limited = served.sdk("alice-default-only").store  # alice, but a key for another vault
    refused = [
        bob.put_item(ns, "diary", {"text": "bob was here"}),
        bob.get_item(ns, "diary"),
        bob.search_items(["users"]),
        bob.list_namespaces(),
        bob.delete_item(ns, "diary"),
        carol.put_item(ns, "diary", {"text": "carol was here"}),
        carol.delete_item(ns, "diary"),
        limited.get_item(ns, "diary"),
        limited.put_item(ns, "diary", {"text": "overwritten"}),
    ]
    for call in refused:
        with pytest.raises(PermissionDeniedError) as err:
            await call
        assert err.value.response.status_code == 403
        assert err.value.response.json()["error"] == "PermissionDenied"
    assert (await carol.get_item(ns, "diary"))["value"] == {"text": "alice's secret"}
    assert _snapshot(served.mem, tuple(ns), "diary") == before
    assert MemOSStore(served.mem).get(tuple(ns), "diary").value == {"text": "alice's secret"}
    denied = [e for e in served.mem.audit_log(limit=10_000) if e.outcome == "denied"]
    assert {"store.put", "store.get", "store.delete"} <= {e.op for e in denied}
    assert {e.principal for e in denied} >= {"user:bob", "user:carol", "user:alice"}


def test_errors_are_json_with_status_codes(served: Served) -> None:
    auth = {"Authorization": f"Bearer {served.keys['alice']}"}
    with httpx.Client(base_url=served.url, headers=auth) as http:
        r = http.put("/store/items", json={"namespace": ["langgraph", "x"], "key": "k",
                                           "value": {"v": 1}})
        assert r.status_code == 400 and r.json()["error"] == "InvalidNamespace"
        r = http.put("/store/items", json={"namespace": ["a"], "key": "k", "value": [1]})
        assert r.status_code == 422 and r.json()["error"] == "InvalidInput"
        r = http.post("/store/items/search", json={"namespace_prefix": ["a"], "limit": -1})
        assert r.status_code == 400 and "limit" in r.json()["message"]
        r = http.get("/store/items", params={"namespace": "a..b", "key": "k"})
        assert r.status_code == 400 and r.json()["error"] == "InvalidNamespace"
        r = http.put("/store/items", headers={"Authorization": "Bearer mk_nope"},
                     json={"namespace": ["a"], "key": "k", "value": {}})
        assert r.status_code == 401 and r.json()["error"] == "Unauthenticated"
        ok = http.put("/store/items", json={"namespace": [*ALICE, "raw"], "key": "k",
                                            "value": {"v": 1}})
        assert (ok.status_code, ok.content) == (204, b"")
        gone = http.request("DELETE", "/store/items",
                            json={"namespace": [*ALICE, "raw"], "key": "k"})
        assert (gone.status_code, gone.content) == (204, b"")
        missing = http.get("/store/items", params={"namespace": "users.alice.raw", "key": "k"})
        assert (missing.status_code, missing.json()) == (200, None)


# --- MemOSRemoteStore ----------------------------------------------------------------------------


def test_remote_store_errors_are_memos_errors(served: Served) -> None:
    ns = (*ALICE, "remote")
    with MemOSRemoteStore(served.url, api_key=served.keys["alice"]) as alice:
        alice.put(ns, "k", {"v": 1})
        with pytest.raises(InvalidInput, match="filter"):
            alice.search(ns, filter=[1])  # type: ignore[arg-type]
        with pytest.raises(InvalidNamespaceError):
            alice.put(("a.b",), "k", {"v": 1})
    with MemOSRemoteStore(served.url, api_key=served.keys["bob"]) as bob:
        with pytest.raises(PermissionDenied, match="user:bob may not write"):
            bob.put(ns, "k", {"v": 2})
        with pytest.raises(PermissionDenied):
            bob.get(ns, "k")
    with MemOSRemoteStore(served.url) as nobody, pytest.raises(PermissionDenied, match="API key"):
        nobody.get(ns, "k")
    dead = MemOSRemoteStore("http://127.0.0.1:9", api_key="mk_x", timeout=2)
    with dead, pytest.raises(StoreError, match="cannot reach"):
        dead.get(ns, "k")
    assert MemOSStore(served.mem).get(ns, "k").value == {"v": 1}


def test_a_compiled_graph_uses_the_remote_store(served: Served, store: MemOSRemoteStore) -> None:
    def remember(state: dict, runtime: Runtime) -> dict:
        runtime.store.put(("notes", state["user"]), "last", {"text": state["text"]})
        return {}

    def recall(state: dict, runtime: Runtime) -> dict:
        item = runtime.store.get(("notes", state["user"]), "last")
        return {"recalled": item.value["text"] if item else None}

    class S(TypedDict, total=False):
        user: str
        text: str
        recalled: str | None

    builder = StateGraph(S)
    builder.add_node("remember", remember)
    builder.add_node("recall", recall)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    builder.add_edge("recall", END)
    graph = builder.compile(store=store)
    out = graph.invoke({"user": "u1", "text": "I love spicy ramen"})
    assert out["recalled"] == "I love spicy ramen"
    out = asyncio.run(graph.ainvoke({"user": "u1", "text": "and udon"}))
    assert out["recalled"] == "and udon"
    local = MemOSStore(served.mem, vault=store.vault or "langgraph")
    assert [h.op for h in served.mem.history(local.cube_id(("notes", "u1"), "last"))] == [
        "create", "update"
    ]
