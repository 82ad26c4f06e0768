"""Channels through the one gate: publish, subscribe, poll and ack are checked and audited, a
subscription is its owner's, a subscriber only receives what it may read, and a refused publish
writes nothing."""

from __future__ import annotations

import pytest

from memos_agents import MemOS
from memos_agents.errors import InvalidInput, NotFound, ScopeViolation
from memos_agents.governance import PermissionDenied

T = "stored anyway?"


def _snapshot(mem: MemOS, user: str) -> list[tuple[str, str, int, str]]:
    return [
        (c.id, c.content, c.lifecycle.version, c.governance.visibility.value)
        for c in mem.list(user_id=user, include_deleted=True)
    ]


def _entries(mem: MemOS, op: str) -> list:
    return [e for e in mem.audit_log(limit=100_000) if e.op == op]


def test_publishing_another_users_cube_needs_rights_in_their_scope(mem: MemOS) -> None:
    shared = mem.add("Alice's plan: move to Lisbon", user_id="alice", visibility="shared")[0]
    before = _snapshot(mem, "alice")
    mallory = mem.as_principal("user:mallory")
    with pytest.raises(PermissionDenied):
        mallory.publish("loot", cube_ids=[shared.id], user_id="alice")
    with pytest.raises(PermissionDenied):  # nor text in alice's name
        mallory.publish("loot", "forged by mallory", user_id="alice")
    assert all(c.published == 0 for c in mem.channels())
    assert _snapshot(mem, "alice") == before  # the bystander is untouched
    denied = [e for e in _entries(mem, "publish") if e.principal == "user:mallory"]
    assert [e.outcome for e in denied] == ["denied", "denied"]
    # a reader of the vault may read alice's shared cube, but not publish as alice
    mem.grant_role("default", "user:mallory", "reader")
    with pytest.raises(PermissionDenied):
        mallory.publish("loot", cube_ids=[shared.id], user_id="alice")
    assert all(c.published == 0 for c in mem.channels())
    # her own scope is hers
    sent = mallory.publish("loot", "mallory's own note", user_id="mallory")
    assert [d.cube.scope.user_id for d in sent] == ["mallory"]
    # a writer of the vault may publish in alice's scope, but is named as who published
    mem.grant_role("default", "user:mallory", "writer")
    sent = mallory.publish("loot", cube_ids=[shared.id], user_id="alice")
    assert [d.published_by for d in sent] == ["user:mallory"]


def test_subscribers_only_receive_what_they_may_read(mem: MemOS) -> None:
    shared = mem.add("Quarterly numbers are up", user_id="alice", visibility="shared")[0]
    public = mem.add("The office opens at nine", user_id="alice", visibility="public")[0]
    mallory = mem.as_principal("user:mallory")
    bob = mem.as_principal("user:bob")
    mem.grant_role("default", "user:bob", "reader")
    mallory.subscribe("news", "mallory")
    bob.subscribe("news", "bob")
    mem.publish("news", cube_ids=[shared.id, public.id], user_id="alice")
    assert [d.cube.id for d in mallory.poll("news", "mallory")] == [public.id]
    assert [d.cube.id for d in bob.poll("news", "bob")] == [shared.id, public.id]
    mem.subscribe("news", "system-sub")
    assert len(mem.poll("news", "system-sub")) == 2


def test_a_subscription_is_its_owners(mem: MemOS) -> None:
    bob = mem.as_principal("user:bob")
    mallory = mem.as_principal("user:mallory")
    bob.subscribe("team", "bob-inbox")
    mem.publish("team", ["one", "two"], user_id="bob")
    for call in (
        lambda: mallory.poll("team", "bob-inbox"),
        lambda: mallory.ack("team", "bob-inbox", 10**9),
        lambda: mallory.subscribe("team", "bob-inbox", start="latest"),
    ):
        with pytest.raises(PermissionDenied):
            call()
    got = bob.poll("team", "bob-inbox")  # the cursor did not move
    assert [d.cube.content for d in got] == ["one", "two"]
    assert bob.ack("team", "bob-inbox", got[0].seq) == got[0].seq
    assert [d.cube.content for d in mem.poll("team", "bob-inbox")] == ["two"]  # system may
    with pytest.raises(NotFound):
        mallory.poll("team", "nobody")
    outcomes = {
        (e.op, e.outcome) for e in mem.audit_log(limit=10_000) if e.principal == "user:mallory"
    }
    assert outcomes == {("poll", "denied"), ("ack", "denied"), ("subscribe", "denied")}


def test_every_channel_call_writes_one_audit_entry(mem: MemOS) -> None:
    ops = ("publish", "subscribe", "poll", "ack", "channels")
    counts = {op: len(_entries(mem, op)) for op in ops}
    mem.subscribe("c", "s")
    sent = mem.publish("c", "hello", user_id="u")
    got = mem.poll("c", "s")
    mem.ack("c", "s", got[0].seq)
    mem.channels()
    after = {op: len(_entries(mem, op)) for op in ops}
    assert {op: after[op] - counts[op] for op in ops} == dict.fromkeys(ops, 1)
    publish = _entries(mem, "publish")[-1]
    assert publish.outcome == "ok" and "channel=c" in publish.detail
    # the new text is written (and audited) as an add of the publisher
    assert sent[0].cube.id in _entries(mem, "add")[-1].cube_ids


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda m, c: m.publish("bad name!", T, user_id="alice"), InvalidInput),
        (lambda m, c: m.publish("", T, user_id="alice"), InvalidInput),
        (lambda m, c: m.publish("ok", T, user_id="alice", tags="x"), InvalidInput),
        (lambda m, c: m.publish("ok", [T, "  "], user_id="alice"), InvalidInput),
        (lambda m, c: m.publish("ok", [T, "a\x00b"], user_id="alice"), InvalidInput),
        (
            lambda m, c: m.publish("ok", T, user_id="alice", cube_ids="abc"),
            InvalidInput,
        ),
        (lambda m, c: m.publish("ok", [T, c], user_id="alice"), ScopeViolation),
        (
            lambda m, c: m.publish("ok", T, user_id="alice", cube_ids=["nope"]),
            NotFound,
        ),
        (
            lambda m, c: m.as_principal("agent:x").publish("ok", T, user_id="alice"),
            PermissionDenied,
        ),
    ],
)
def test_a_refused_publish_writes_nothing(mem: MemOS, call, error) -> None:
    private = mem.add("alice's private note", user_id="alice")[0]
    mem.add("bob's note", user_id="bob", visibility="shared")
    before = {u: _snapshot(mem, u) for u in ("alice", "bob")}
    with pytest.raises(error):
        call(mem, private)
    assert {u: _snapshot(mem, u) for u in ("alice", "bob")} == before
    assert all(c.published == 0 for c in mem.channels())
    assert T not in [h.cube.content for h in mem.search(T, user_id="alice", k=5)]


def test_skipped_deliveries_never_hide_what_follows(mem: MemOS) -> None:
    mallory = mem.as_principal("user:mallory")
    mallory.subscribe("feed", "mallory")
    mem.subscribe("feed", "system")
    hidden = mem.publish("feed", ["one", "two", "three", "four", "five"], user_id="alice")
    mem.delete(hidden[-1].cube.id)  # deleted after publishing: skipped for everyone
    public = mem.add("The canteen opens at noon", user_id="alice", visibility="public")[0]
    mem.publish("feed", cube_ids=[public.id], user_id="alice")
    got = mallory.poll("feed", "mallory", limit=2)
    assert [d.cube.id for d in got] == [public.id]
    assert [d.cube.content for d in mem.poll("feed", "system", limit=2)] == ["one", "two"]
    assert len(mem.poll("feed", "system", limit=10)) == 5
    mallory.ack("feed", "mallory", got[-1].seq)
    assert mallory.poll("feed", "mallory") == []
