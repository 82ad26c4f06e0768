"""The one gate: every public operation of the facade checks the principal and writes one
audit entry; a principal with no role reaches nothing of another user's and changes nothing.

`OPERATIONS` is the table of the facade's public operations. A new public method fails
`test_every_public_operation_is_in_the_table` until it is added, with how it is attacked."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from memos_agents import MemOS
from memos_agents.cube import State
from memos_agents.errors import Conflict, InvalidInput, NotFound
from memos_agents.governance import PermissionDenied

MALLORY = "user:mallory"

# how a principal with no role attacks alice's private cube through each operation:
# "denied" -> PermissionDenied; "empty" -> returns nothing of alice's
Attack = Callable[[MemOS, dict[str, Any]], Any]
OPERATIONS: dict[str, tuple[str, Attack]] = {
    "add": ("denied", lambda m, c: m.add("planted", user_id="alice")),
    "add_document": ("denied", lambda m, c: m.add_document("planted doc", user_id="alice")),
    "search": ("empty", lambda m, c: m.search("PIN", user_id="alice", k=10)),
    "explain": ("empty", lambda m, c: m.explain("PIN", user_id="alice", k=10).hits),
    "get": ("denied", lambda m, c: m.get(c["secret"].id)),
    "history": ("denied", lambda m, c: m.history(c["secret"].id)),
    "update": ("denied", lambda m, c: m.update(c["secret"].id, "hijacked")),
    "delete": ("denied", lambda m, c: m.delete(c["secret"].id)),
    "transition": ("denied", lambda m, c: m.transition(c["secret"].id, "archived")),
    "rollback": ("denied", lambda m, c: m.rollback(c["secret"].id, 1)),
    "purge": ("denied", lambda m, c: m.purge(c["secret"].id)),
    "list": ("empty", lambda m, c: m.list(user_id="alice")),
    "graph": ("denied", lambda m, c: m.graph(user_id="alice")),
    "as_of": ("empty", lambda m, c: m.as_of(datetime.now(UTC), user_id="alice")),
    "share": ("denied", lambda m, c: m.share(c["secret"].id, MALLORY)),
    "unshare": ("denied", lambda m, c: m.unshare(c["secret"].id, "user:bob")),
    "grant_role": ("denied", lambda m, c: m.grant_role("default", MALLORY, "owner")),
    "revoke_role": ("denied", lambda m, c: m.revoke_role("default", "user:bob")),
    "set_retention": ("denied", lambda m, c: m.set_retention("default", None)),
    "set_redaction_policy": ("denied", lambda m, c: m.set_redaction_policy("default", None)),
    "sweep": ("denied", lambda m, c: m.sweep()),
    "stats": ("denied", lambda m, c: m.stats()),
    "audit_log": ("empty", lambda m, c: [e for e in m.audit_log() if e.principal != MALLORY]),
    "verify_audit": ("denied", lambda m, c: m.verify_audit()),
    "export": ("empty", lambda m, c: m.export(user_id="alice").cubes),
    "import_file": ("denied", lambda m, c: m.import_file(c["doc"], user_id="alice")),
    "publish": ("denied", lambda m, c: m.publish("news", cube_ids=[c["shared"].id],
                                                 user_id="alice")),
    "subscribe": ("denied", lambda m, c: m.subscribe("news", "alice-inbox")),
    "poll": ("denied", lambda m, c: m.poll("news", "alice-inbox")),
    "ack": ("denied", lambda m, c: m.ack("news", "alice-inbox", 1)),
    "build_activation": ("denied", lambda m, c: m.build_activation([c["secret"].id],
                                                                   user_id="alice")),
    "distil": ("denied", lambda m, c: m.distil([c["secret"].id], user_id="alice")),
    "generate": ("denied", lambda m, c: m.generate("q", user_id="alice",
                                                   memories=[c["secret"].id])),
    "generate_stream": ("denied", lambda m, c: list(m.generate_stream(
        "q", user_id="alice", memories=[c["secret"].id]))),
    "chat_request": ("denied", lambda m, c: m.chat_request("q", user_id="alice",
                                                           memories=[c["secret"].id])),
    "load_parameter": ("denied", lambda m, c: m.load_parameter(c["secret"].id)),
    "unload_parameter": ("denied", lambda m, c: m.unload_parameter(c["secret"].id)),
    "stop_model": ("denied", lambda m, c: m.stop_model()),
    "channels": ("empty", lambda m, c: m.channels()),
    "scheduler": ("denied", lambda m, c: m.scheduler),
    "model_memory": ("denied", lambda m, c: m.model_memory),
}
# public members that touch no memory of anyone: building views, the gate itself, lifecycle
# of this handle, and handles on process-level components whose operations are gated above
NOT_OPERATIONS = {
    "open": "makes a handle", "as_principal": "makes a view", "gate": "the gate itself",
    "readable": "a filter over cubes the caller already holds", "close": "this handle",
    "model": "connects to the model process",
    "chat_model": "a chat model; with user_id= each request is gated as chat_request",
    "model_runtime": "the process connection",
}


def test_every_public_operation_is_in_the_table() -> None:
    public = {n for n, _ in inspect.getmembers(MemOS) if not n.startswith("_")}
    sync = {n for n in public if not (n.startswith("a") and n[1:] in public)}
    missing = sync - OPERATIONS.keys() - NOT_OPERATIONS.keys()
    assert not missing, f"public operations not attacked by this test (add them): {missing}"
    for name in public - sync:  # async twins delegate to their sync operation
        src = inspect.getsource(getattr(MemOS, name))
        assert f"self.{name[1:]}," in src or f"self.{name[1:]})" in src, name


@pytest.fixture(scope="module")
def shared_mem(tmp_path_factory, embedder):
    from memos_agents.graph.falkordb_server import stop_server

    d = tmp_path_factory.mktemp("gate") / "memos"
    m = MemOS.open(d, embedder=embedder, graph_idle_timeout=30)
    yield m
    m.close()
    stop_server(d / "graph")


@pytest.fixture(scope="module")
def attacked(shared_mem: MemOS) -> dict[str, Any]:
    mem = shared_mem
    secret = mem.add("Alice's PIN is 4321.", user_id="alice")[0]
    mem.update(secret.id, "Alice's PIN is 9876.")
    shared = mem.add("Alice likes jazz.", user_id="alice", visibility="shared")[0]
    doc = mem.export(user_id="alice")
    mem.subscribe("news", "alice-inbox")
    mem.publish("news", cube_ids=[shared.id], user_id="alice")
    return {"secret": mem.get(secret.id), "shared": shared, "doc": doc}


def _alice(mem: MemOS) -> list[tuple[str, int, str, str]]:
    return sorted((c.id, c.lifecycle.version, c.lifecycle.state.value, c.content)
                  for c in mem.list(user_id="alice", include_deleted=True, limit=1000))


@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_a_principal_without_a_role_reaches_nothing(shared_mem: MemOS, attacked, op: str) -> None:
    mem = shared_mem
    expect, attack = OPERATIONS[op]
    mallory = mem.as_principal(MALLORY)
    before = _alice(mem)
    n_before = len([e for e in mem.audit_log(limit=10**6) if e.principal == MALLORY])
    if expect == "denied":
        with pytest.raises(PermissionDenied):
            attack(mallory, attacked)
    else:
        got = attack(mallory, attacked)
        assert list(got) == [], f"{op} served {got!r}"
    entries = [e for e in mem.audit_log(limit=10**6) if e.principal == MALLORY]
    assert len(entries) == n_before + 1, f"{op} wrote {len(entries) - n_before} audit entries"
    assert entries[-1].outcome == ("denied" if expect == "denied" else "ok")
    assert _alice(mem) == before
    assert mem.get(attacked["secret"].id).content == "Alice's PIN is 9876."


def test_update_with_expected_version_never_loses_an_update(mem: MemOS) -> None:
    c = mem.add("The meeting is on Monday.", user_id="alice")[0]
    read = mem.get(c.id)
    mem.update(c.id, "The meeting is on Tuesday.", expected_version=read.lifecycle.version)
    with pytest.raises(Conflict):  # a second client with the same stale read
        mem.update(c.id, "The meeting is on Friday.", expected_version=read.lifecycle.version)
    assert mem.get(c.id).content == "The meeting is on Tuesday."
    assert [v.version for v in mem.history(c.id)] == [1, 2]
    with pytest.raises(InvalidInput):
        mem.update(c.id, "x", expected_version="2")  # type: ignore[arg-type]


def test_search_as_of_serves_the_version_that_held_then(mem: MemOS) -> None:
    c = mem.add("Alice's office is in the Lisbon harbour building.", user_id="alice")[0]
    then = datetime.now(UTC)
    mem.update(c.id, "Alice's office is in the Porto riverside tower.")
    for mode in ("hybrid", "dense"):
        hits = mem.search("Where is Alice's office?", user_id="alice", as_of=then, mode=mode)
        assert [(h.cube.id, h.cube.lifecycle.version) for h in hits] == [(c.id, 1)], mode
        assert "Lisbon" in hits[0].cube.content
    assert [x.content for x in mem.as_of(then, user_id="alice")] == [hits[0].cube.content]
    now_hits = mem.search("Where is Alice's office?", user_id="alice")
    assert now_hits[0].cube.lifecycle.version == 2
    before = then - timedelta(hours=1)
    assert mem.search("Where is Alice's office?", user_id="alice", as_of=before) == []


def test_a_reader_sees_only_the_facts_it_may_read_in_the_graph(mem: MemOS) -> None:
    mem.add("Alice keeps her diary in the blue notebook about Zanzibar.", user_id="alice")
    mem.add("Alice plays chess with Bob on Sundays in the park.", user_id="alice",
            visibility="shared")
    mem.grant_role("default", "user:bob", "reader")
    full = mem.graph(user_id="alice").render(concepts=50, facts=10)
    seen = mem.as_principal("user:bob").graph(user_id="alice")
    text = seen.render(concepts=50, facts=10)
    assert "Zanzibar" in full and "diary" in full
    assert "Zanzibar" not in text and "diary" not in text and "notebook" not in text
    assert "chess" in text
    facts = {f["id"] for t in seen.topics for c in t.concepts for f in c["facts"]}
    assert facts and all(mem.get(i).governance.visibility.value == "shared" for i in facts)


def test_sweep_and_stats_are_the_systems(mem: MemOS) -> None:
    mem.add("short lived", user_id="alice", ttl=0.01)
    with pytest.raises(PermissionDenied):
        mem.as_principal("user:alice").sweep()
    assert mem.sweep(now=datetime.now(UTC) + timedelta(seconds=5))["expired"] == 1
    assert [c.lifecycle.state for c in mem.list(user_id="alice", include_deleted=True)] == [
        State.expired
    ]


def test_a_cube_past_its_ttl_is_not_read_but_can_be_erased(mem: MemOS) -> None:
    c = mem.add("a passing thought", user_id="alice", ttl=0.05)[0]
    time.sleep(0.1)
    with pytest.raises(NotFound, match="expired"):
        mem.get(c.id)
    assert [v.version for v in mem.history(c.id)] == [1]
    mem.purge(c.id)
    with pytest.raises(NotFound):
        mem.history(c.id)
