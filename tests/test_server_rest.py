"""The REST API (`/v1`) over a real MemOS (Chroma, the graph, the embedder): every route, the
key as the only identity, keyset paging, conflicts, purge receipts, channels and their SSE
stream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from memos_agents.blobs import lora_blob_name
from memos_agents.cube import Form, MemCube, Provenance, Scope, SourceKind
from memos_agents.keys import KeyStore
from memos_agents.server import create_app

ROUTES = {
    "/v1/memories": {"post", "get"},
    "/v1/documents": {"post"},
    "/v1/search": {"post"},
    "/v1/memories/{cube_id}": {"get", "patch", "delete"},
    "/v1/memories/{cube_id}/history": {"get"},
    "/v1/export": {"get"},
    "/v1/import": {"post"},
    "/v1/channels": {"get"},
    "/v1/channels/{channel}/publish": {"post"},
    "/v1/channels/{channel}/subscribe": {"post"},
    "/v1/channels/{channel}/poll": {"get"},
    "/v1/channels/{channel}/ack": {"post"},
    "/v1/channels/{channel}/events": {"get"},
    "/v1/scheduler/status": {"get"},
    "/v1/model/generate": {"post"},
}


class Api:
    """A test client with one bearer key per principal."""

    def __init__(self, client: TestClient, keys: KeyStore) -> None:
        self.client = client
        self.keys = keys
        self.headers: dict[str, dict[str, str]] = {}

    def key(self, principal: str, **kw: Any) -> dict[str, str]:
        _, secret = self.keys.create(principal, **kw)
        self.headers[principal] = {"Authorization": f"Bearer {secret}"}
        return self.headers[principal]

    def call(self, as_: str, method: str, url: str, **kw: Any) -> Any:
        headers = {**self.headers[as_], **kw.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kw)


@pytest.fixture
def api(mem) -> Iterator[Api]:
    with TestClient(create_app(mem)) as client:
        out = Api(client, KeyStore(mem.vault.catalog.engine))
        out.key("user:alice")
        out.key("user:bob")
        yield out


def _add(api: Api, who: str, *texts: str, **kw: Any) -> list[dict[str, Any]]:
    messages = [{"role": "user", "content": t} for t in texts]
    r = api.call(who, "POST", "/v1/memories", json={"messages": messages, **kw})
    assert r.status_code == 201, r.text
    return r.json()["items"]


def test_openapi_lists_every_route_and_the_system_routes_answer(mem) -> None:
    with TestClient(create_app(mem)) as client:  # open mode: no key yet, the caller is system
        paths = client.get("/openapi.json").json()["paths"]
        for path, methods in ROUTES.items():
            assert methods <= set(paths.get(path, {})), path
        assert "SearchRequest" in json.dumps(paths["/v1/search"])
        status = client.get("/v1/scheduler/status")
        assert status.status_code == 200
        assert {"running", "budgets", "hot", "decisions", "jobs"} <= status.json().keys()
        r = client.post("/v1/model/generate", json={"prompt": "hi", "user_id": "alice"})
        assert r.status_code == 503 and r.json()["error"] == "ModelUnavailable"
        _, secret = KeyStore(mem.vault.catalog.engine).create("user:alice")
        alice = {"Authorization": f"Bearer {secret}"}
        r = client.get("/v1/scheduler/status", headers=alice)
        assert r.status_code == 403 and r.json()["error"] == "PermissionDenied"
        r = client.post("/v1/model/generate", json={"prompt": "hi"}, headers=alice)
        assert r.status_code == 503 and r.json()["error"] == "ModelUnavailable"


def test_memories_add_search_get_update_history_delete(api: Api) -> None:
    cube = _add(api, "user:alice", "I moved to Lisbon in May.", session_id="s1",
                tags=["travel"], metadata={"src": "chat"})[0]
    assert cube["scope"]["user_id"] == "alice" and cube["organisation"]["tags"][0] == "travel"
    r = api.call("user:alice", "POST", "/v1/memories", json={"messages": "Tea, not coffee.",
                                                              "ttl": 3600, "visibility": "shared"})
    assert r.status_code == 201 and r.json()["items"][0]["lifecycle"]["expires_at"]
    r = api.call("user:alice", "POST", "/v1/documents",
                 json={"text": "The boiler is serviced every March.", "name": "house.md"})
    assert r.status_code == 201
    assert r.json()["items"][0]["provenance"]["source_refs"] or r.json()["items"][0]["metadata"]

    r = api.call("user:alice", "POST", "/v1/search", json={"query": "Where did I move?", "k": 2})
    assert r.status_code == 200 and r.json()["explain"] is None
    top = r.json()["hits"][0]
    assert top["id"] == cube["id"] and top["content"] == cube["content"] and top["routes"]
    assert {"score", "cube", "graph_path"} <= top.keys()
    r = api.call("user:alice", "POST", "/v1/search",
                 json={"query": "Lisbon", "explain": True, "routes": ["keyword", "graph"]})
    assert r.json()["explain"]["stages"] and r.json()["explain"]["intent"]

    url = f"/v1/memories/{cube['id']}"
    assert api.call("user:alice", "GET", url).json()["content"] == cube["content"]
    r = api.call("user:alice", "PATCH", url, json={"content": "I moved to Porto in May.",
                                                   "expected_version": 1})
    assert r.status_code == 200 and r.json()["lifecycle"]["version"] == 2
    r = api.call("user:alice", "PATCH", url, json={"content": "stale", "expected_version": 1})
    assert r.status_code == 409 and r.json()["error"] == "Conflict"
    history = api.call("user:alice", "GET", f"{url}/history").json()["items"]
    assert [(v["version"], v["op"]) for v in history] == [(1, "create"), (2, "update")]
    r = api.call("user:alice", "DELETE", url)
    assert r.status_code == 200 and r.json()["lifecycle"]["state"] == "deleted"
    assert api.call("user:alice", "GET", url).json()["lifecycle"]["state"] == "deleted"
    r = api.call("user:alice", "POST", "/v1/search", json={"query": "Porto", "k": 5})
    assert cube["id"] not in [h["id"] for h in r.json()["hits"]]


def test_bad_requests_are_400_malformed_ones_422(api: Api) -> None:
    bad = {"k": 0}, {"window": 99}, {"mode": "dense", "routes": ["dense"]}
    for extra in bad:
        r = api.call("user:alice", "POST", "/v1/search", json={"query": "x", **extra})
        assert r.status_code == 400 and r.json()["error"] == "InvalidInput", extra
    r = api.call("user:alice", "POST", "/v1/memories", content=b'{"messages": "oops"',
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "InvalidInput"
    for body in ({"messages": 3}, {"messages": "x", "principal": "system"}, {}):
        assert api.call("user:alice", "POST", "/v1/memories", json=body).status_code == 422
    assert api.call("user:alice", "POST", "/v1/memories",
                    json={"messages": "x", "ttl": -1}).status_code == 400
    assert api.call("user:alice", "GET", "/v1/memories", params={"limit": 0}).status_code == 400
    r = api.call("user:alice", "GET", "/v1/memories", params={"cursor": "not-a-cursor"})
    assert r.status_code == 400 and "cursor" in r.json()["message"]
    assert api.client.get("/v1/memories").status_code == 401  # keys exist: no key, no answer


def test_alice_cannot_reach_bobs_memory(api: Api, mem) -> None:
    secret = _add(api, "user:bob", "Bob's door code is 2468.")[0]
    url = f"/v1/memories/{secret['id']}"
    before = api.call("user:bob", "GET", f"{url}/history").json()
    attacks = [
        ("GET", url, {}), ("GET", f"{url}/history", {}), ("DELETE", url, {}),
        ("DELETE", url, {"params": {"purge": "true"}}),
        ("PATCH", url, {"json": {"content": "hijacked"}}),
        ("POST", "/v1/memories", {"json": {"messages": "planted", "user_id": "bob"}}),
        ("POST", "/v1/documents", {"json": {"text": "planted", "user_id": "bob"}}),
        ("POST", "/v1/import", {"json": api.call("user:bob", "GET", "/v1/export").json(),
                                "params": {"user_id": "bob"}}),
        # a user_id that is not the key's own, without a role in the vault
        ("POST", "/v1/search", {"json": {"query": "door code", "user_id": "bob"}}),
        ("POST", "/v1/search", {"json": {"query": "door", "user_id": "bob", "explain": True}}),
        ("GET", "/v1/memories", {"params": {"user_id": "bob"}}),
        ("GET", "/v1/export", {"params": {"user_id": "bob"}}),
        ("POST", "/v1/channels/news/publish", {"json": {"memory": "x", "user_id": "bob"}}),
    ]
    for method, target, kw in attacks:
        r = api.call("user:alice", method, target, **kw)
        assert r.status_code in (403, 404), (method, target, r.text)
    assert api.call("user:bob", "GET", f"{url}/history").json() == before
    bobs = api.call("user:bob", "GET", "/v1/memories").json()["items"]
    assert [c["content"] for c in bobs] == ["Bob's door code is 2468."]
    assert [e.outcome for e in mem.audit_log() if e.principal == "user:alice"
            and e.op == "search"] == ["denied"]

    mem.grant_role("default", "user:alice", "writer")  # with a role, alice writes for bob
    assert _add(api, "user:alice", "Bob's dentist is on Friday.", user_id="bob")
    r = api.call("user:alice", "POST", "/v1/search", json={"query": "door code", "user_id": "bob"})
    assert r.status_code == 200  # and sees what the role reaches: bob's private cube is not
    assert secret["id"] not in [h["id"] for h in r.json()["hits"]]
    api.key("user:carol", vaults=["team"])  # a key limited to one vault reaches no other
    carol = _add(api, "user:carol", "team notes", vault="team")[0]
    assert carol["scope"]["vault"] == "team"
    r = api.call("user:carol", "POST", "/v1/memories", json={"messages": "x"})
    assert r.status_code == 403 and "vault" in r.json()["message"]
    mem.grant_role("default", "user:carol", "admin")
    assert api.call("user:carol", "GET", url).status_code == 403


def test_cursor_pages_return_every_memory_once_while_memories_are_added(api: Api) -> None:
    ids = [c["id"] for c in _add(api, "user:alice", *[f"note {i}" for i in range(7)])]
    _add(api, "user:bob", "bob's note")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.call("user:alice", "GET", "/v1/memories", params=params).json()
        seen += [c["id"] for c in page["items"]]
        pages += 1
        if pages == 1:  # added between pages: they come last, nothing repeats
            ids += [c["id"] for c in _add(api, "user:alice", "late 1", "late 2")]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids and len(set(seen)) == 9 and pages == 3


def test_purge_returns_a_receipt_and_erases_vectors_graph_and_blobs(api: Api, mem) -> None:
    cube = _add(api, "user:alice", "Erase me: passport X123 issued in Oslo.")[0]
    api.call("user:alice", "PATCH", f"/v1/memories/{cube['id']}",
             json={"content": "Erase me: X124"})
    facts = mem.vault.graph.counts("default", "alice")["facts"]
    assert mem.vault.index.embeddings("default", "alice", [cube["id"]])
    r = api.call("user:alice", "DELETE", f"/v1/memories/{cube['id']}", params={"purge": "true"})
    receipt = r.json()
    assert r.status_code == 200 and receipt["id"] == cube["id"] and receipt["purged"] is True
    assert (receipt["versions"], receipt["vectors"], receipt["graph_facts"], receipt["blobs"]) == (
        2, 1, 1, 0)
    entry = [e for e in mem.audit_log(cube_id=cube["id"]) if e.op == "purge"][-1]
    assert receipt["audit"] == {"seq": entry.seq, "hash": entry.hash}
    assert entry.principal == "user:alice"
    assert mem.vault.index.embeddings("default", "alice", [cube["id"]]) == {}
    assert mem.vault.graph.counts("default", "alice")["facts"] == facts - 1
    assert mem.vault.graph.entities_of([cube["id"]]).get(cube["id"]) in (None, [])
    assert api.call("user:alice", "GET", f"/v1/memories/{cube['id']}").status_code == 404

    blobs = mem.config.data_dir / "blobs"
    lora = MemCube(form=Form.parameter, content="pending",
                   scope=Scope(vault="default", user_id="alice"),
                   provenance=Provenance(source_kind=SourceKind.derived, created_by="user:alice"))
    lora.content = lora_blob_name(lora.id, 1)
    mem.vault.add([lora], created_by="user:alice")
    (blobs / lora.content).mkdir(parents=True)
    (blobs / lora.content / "adapter.safetensors").write_bytes(b"weights")
    r = api.call("user:alice", "DELETE", f"/v1/memories/{lora.id}", params={"purge": "true"})
    assert r.status_code == 200 and r.json()["blobs"] == 1
    assert not (blobs / "lora" / lora.id).exists()

    kv = f"kv/{'ab' * 20}.safetensors"  # one KV file, two caches: it goes with the last one
    caches = [MemCube(form=Form.activation, content=kv, scope=lora.scope,
                      provenance=lora.provenance) for _ in range(2)]
    mem.vault.add(caches, created_by="user:alice")
    (blobs / "kv").mkdir(exist_ok=True)
    (blobs / kv).write_bytes(b"kv")
    for cache, removed in zip(caches, (0, 1), strict=True):
        r = api.call("user:alice", "DELETE", f"/v1/memories/{cache.id}", params={"purge": "true"})
        assert r.json()["blobs"] == removed and (blobs / kv).exists() == (not removed)


def test_export_and_import_a_mip_document(api: Api) -> None:
    _add(api, "user:alice", "Alice plays the cello.")
    doc = api.call("user:alice", "GET", "/v1/export").json()
    assert doc["format"] == "mip" and [c["cube"]["content"] for c in doc["cubes"]] == [
        "Alice plays the cello."]
    r = api.call("user:alice", "POST", "/v1/import", json=doc)
    assert r.status_code == 201 and r.json()["count"] == 1
    assert r.json()["items"][0]["id"] != doc["cubes"][0]["cube"]["id"]  # a taken id is renamed
    assert len(api.call("user:alice", "GET", "/v1/memories").json()["items"]) == 2
    r = api.call("user:alice", "POST", "/v1/import", json={**doc, "format": "nope"})
    assert r.status_code == 400


def test_channels_publish_subscribe_poll_ack_and_the_event_stream(api: Api, mem) -> None:
    r = api.call("user:alice", "POST", "/v1/channels/news/subscribe",
                 json={"subscriber": "alice-inbox"})
    assert r.status_code == 200 and r.json()["name"] == "news"
    r = api.call("user:bob", "POST", "/v1/channels/news/subscribe",
                 json={"subscriber": "alice-inbox"})
    assert r.status_code == 403
    for path in ("poll?subscriber=alice-inbox", "events?subscriber=alice-inbox"):
        assert api.call("user:bob", "GET", f"/v1/channels/news/{path}").status_code == 403
    assert api.call("user:bob", "POST", "/v1/channels/news/ack",
                    json={"subscriber": "alice-inbox", "seq": 9}).status_code == 403

    mem.grant_role("default", "user:alice", "reader")  # readers reach the vault's shared cubes
    r = api.call("user:bob", "POST", "/v1/channels/news/publish", json={"memory": "Standup at 9."})
    assert r.status_code == 201
    first = r.json()["items"][0]
    assert first["cube"]["scope"]["user_id"] == "bob" and first["published_by"] == "user:bob"
    shared = _add(api, "user:bob", "The release is on Monday.", visibility="shared")[0]
    r = api.call("user:bob", "POST", "/v1/channels/news/publish", json={"cube_id": shared["id"]})
    assert r.status_code == 201
    polled = api.call("user:alice", "GET", "/v1/channels/news/poll",
                      params={"subscriber": "alice-inbox"}).json()["items"]
    assert [d["cube"]["content"] for d in polled] == ["Standup at 9.", "The release is on Monday."]
    r = api.call("user:alice", "POST", "/v1/channels/news/ack",
                 json={"subscriber": "alice-inbox", "seq": polled[0]["seq"]})
    assert r.json()["cursor"] == polled[0]["seq"]
    names = [c["name"] for c in api.call("user:alice", "GET", "/v1/channels").json()["items"]]
    assert names == ["news"]
    assert api.call("user:bob", "GET", "/v1/channels").json()["items"] == []

    events: list[str] = []
    with api.client.stream("GET", "/v1/channels/news/events", params={"subscriber":
                           "alice-inbox"}, headers=api.headers["user:alice"]) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith(("id:", "event:", "data:")):
                events.append(line)
            if line.startswith("data:") and len(events) == 3:  # published while streaming
                mem.as_principal("user:bob").publish("news", "Lunch is at noon.", user_id="bob")
            if len(events) == 6:
                break
    assert events[0] == f"id: {polled[1]['seq']}" and events[1] == "event: delivery"
    assert json.loads(events[2].removeprefix("data:"))["cube"]["id"] == shared["id"]
    assert events[3] == f"id: {polled[1]['seq'] + 1}"
    assert json.loads(events[5].removeprefix("data:"))["cube"]["content"] == "Lunch is at noon."
