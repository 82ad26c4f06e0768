"""MemLifecycle through the facade: transitions, TTL sweep, retention, rollback, as_of, purge."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from memos_agents import MemOS
from memos_agents.catalog import versions_t
from memos_agents.cube import State
from memos_agents.errors import InvalidInput, NotFound
from memos_agents.lifecycle import RetentionPolicy


def test_transitions_are_versions_and_checked(mem: MemOS) -> None:
    c = mem.add("The office wifi password is tulip42.", user_id="alice")[0]
    frozen = mem.transition(c.id, "frozen")
    assert frozen.lifecycle.state is State.frozen and frozen.lifecycle.version == 2
    assert mem.search("wifi password", user_id="alice", k=1)[0].cube.id == c.id  # still found
    with pytest.raises(InvalidInput):
        mem.update(c.id, "changed")  # frozen is read-only
    with pytest.raises(InvalidInput, match="cannot go from frozen to deleted"):
        mem.delete(c.id)
    mem.transition(c.id, "active")
    mem.transition(c.id, "archived")
    assert mem.search("wifi password", user_id="alice", k=5) == []
    assert mem.list(user_id="alice") == []
    restored = mem.transition(c.id, State.active)
    assert mem.search("wifi password", user_id="alice", k=1)[0].cube.id == c.id
    assert [h.op for h in mem.history(c.id)] == [
        "create",
        "freeze",
        "restore",
        "archive",
        "restore",
    ]
    assert restored.lifecycle.version == 5
    with pytest.raises(InvalidInput, match="state must be one of"):
        mem.transition(c.id, "melted")


def test_rollback_restores_an_earlier_version_as_a_new_one(mem: MemOS) -> None:
    c = mem.add("I live in Lisbon.", user_id="alice")[0]
    mem.update(c.id, "I live in Porto.")
    mem.update(c.id, "I live in Faro.")
    back = mem.rollback(c.id, 1)
    assert back.content == "I live in Lisbon." and back.lifecycle.version == 4
    assert (
        mem.search("where do I live", user_id="alice", k=1)[0].cube.content == "I live in Lisbon."
    )
    assert [h.op for h in mem.history(c.id)] == ["create", "update", "update", "rollback"]
    with pytest.raises(InvalidInput, match="no earlier version"):
        mem.rollback(c.id, 9)


def test_sweep_expires_ttl_and_applies_retention(mem: MemOS) -> None:
    short = mem.add("Parking spot 12 today.", user_id="alice", ttl=1)[0]
    old = mem.add([f"note {i}" for i in range(5)], user_id="bob", vault="logs")
    time.sleep(1.1)
    mem.set_retention("logs", RetentionPolicy(max_count=3))
    assert mem.sweep() == {"expired": 1, "archived": 2}
    assert mem.get(short.id).lifecycle.state is State.expired
    assert [h.op for h in mem.history(short.id)] == ["create", "expire"]
    states = [mem.get(c.id).lifecycle.state for c in old]
    assert states == [State.archived, State.archived, State.active, State.active, State.active]
    assert mem.sweep() == {"expired": 0, "archived": 0}
    later = datetime.now(UTC) + timedelta(days=10)
    mem.set_retention("logs", RetentionPolicy(max_age_days=5))
    assert mem.sweep(now=later)["archived"] == 3


def test_as_of_answers_what_was_true_then(mem: MemOS) -> None:
    t0 = datetime.now(UTC)
    c = mem.add("I work at the bakery.", user_id="alice")[0]
    other = mem.add("My cat is called Tofu.", user_id="alice")[0]
    time.sleep(0.05)
    t1 = datetime.now(UTC)
    mem.update(c.id, "I work at the library.")
    time.sleep(0.05)
    t2 = datetime.now(UTC)
    mem.delete(other.id)
    assert mem.as_of(t0 - timedelta(seconds=1), user_id="alice") == []
    then = {x.content for x in mem.as_of(t1, user_id="alice")}
    assert then == {"I work at the bakery.", "My cat is called Tofu."}
    now = {x.content for x in mem.as_of(datetime.now(UTC), user_id="alice")}
    assert now == {"I work at the library."}
    best = mem.as_of(t2 - timedelta(microseconds=1), user_id="alice", query="pet", k=1)
    assert [x.content for x in best] == ["My cat is called Tofu."]
    with pytest.raises(InvalidInput):
        mem.as_of(datetime.now(), user_id="alice")


def test_purge_removes_from_every_store_but_the_audit_keeps_it(mem: MemOS) -> None:
    c = mem.add("Erase me: my passport number is X123.", user_id="alice")[0]
    mem.update(c.id, "Erase me: passport X124.")
    before = mem.stats()
    mem.purge(c.id)
    after = mem.stats()
    assert after["cubes"] == before["cubes"] - 1 and after["vectors"] == before["vectors"] - 1
    assert after["graph"]["facts"] == before["graph"]["facts"] - 1
    with pytest.raises(NotFound):
        mem.get(c.id)
    with mem.vault.catalog.engine.connect() as conn:
        n = conn.execute(select(func.count()).where(versions_t.c.cube_id == c.id)).scalar()
    assert n == 0
    assert mem.vault.graph.facts_mentioning("default", "alice", ["X123", "Erase"]) == []
    assert [e.op for e in mem.audit_log(cube_id=c.id)][-1] == "purge"
    assert "passport" not in str([e.model_dump() for e in mem.audit_log(cube_id=c.id)])


def test_scheduler_tick_applies_retention(mem: MemOS) -> None:
    cubes = mem.add([f"log line {i}" for i in range(4)], user_id="ops", vault="logs")
    mem.set_retention("logs", RetentionPolicy(max_count=1))
    mem.scheduler.tick()
    assert [mem.get(c.id).lifecycle.state for c in cubes] == [State.archived] * 3 + [State.active]


def test_next_version_is_the_one_way_versions_are_made() -> None:
    from memos_agents.cube import LIVE_STATES, MemCube, Organisation, Provenance, Scope
    from memos_agents.lifecycle import LIVE, check_transition, next_version

    assert LIVE is LIVE_STATES and frozenset({State.active, State.frozen}) == LIVE
    cube = MemCube(
        content="v1",
        scope=Scope(user_id="alice"),
        provenance=Provenance(created_by="test"),
        metadata={"k": 1},
    )
    when = datetime(2030, 1, 1, tzinfo=UTC)
    edited = next_version(
        cube, when=when, content="v2", organisation=Organisation(tags=["x"]), metadata={"k": 2}
    )
    assert (edited.id, edited.lifecycle.version, edited.content) == (cube.id, 2, "v2")
    assert edited.lifecycle.state is State.active and edited.lifecycle.updated_at == when
    assert edited.organisation.tags == ["x"] and edited.metadata == {"k": 2}
    assert (cube.content, cube.lifecycle.version, cube.metadata) == ("v1", 1, {"k": 1})
    gone = next_version(edited, State.deleted, when)
    assert gone.lifecycle.version == 3 and gone.lifecycle.valid_to == when
    assert next_version(gone, State.active).lifecycle.valid_to is None
    with pytest.raises(InvalidInput):
        check_transition(gone, State.frozen)
