"""MemStore: channels of cubes between agents, durable cursors, at-least-once delivery."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from memos_agents import MemOS
from memos_agents.errors import InvalidInput, NotFound, ScopeViolation


def test_publish_poll_ack_is_at_least_once(mem: MemOS) -> None:
    mem.subscribe("findings", "agent:writer")
    sent = mem.publish(
        "findings",
        ["Lisbon has 300 sunny days a year.", "Porto is on the Douro."],
        user_id="team",
        agent_id="researcher",
    )
    assert [d.cube.governance.visibility.value for d in sent] == ["shared", "shared"]
    assert sent[0].cube.provenance.created_by == "agent:researcher"

    got = mem.poll("findings", "agent:writer")
    assert [d.cube.content for d in got] == [d.cube.content for d in sent]
    assert got[0].published_by == "agent:researcher"
    # not acknowledged: delivered again
    assert [d.seq for d in mem.poll("findings", "agent:writer")] == [d.seq for d in got]
    mem.ack("findings", "agent:writer", got[0].seq)
    assert [d.seq for d in mem.poll("findings", "agent:writer")] == [got[1].seq]
    mem.ack("findings", "agent:writer", got[1].seq)
    assert mem.poll("findings", "agent:writer") == []
    assert mem.ack("findings", "agent:writer", 0) == got[1].seq  # cursor never goes back


def test_subscribers_have_their_own_cursors(mem: MemOS) -> None:
    mem.publish("news", "first", user_id="u", agent_id="a")
    mem.subscribe("news", "early")
    mem.subscribe("news", "late", start="latest")
    mem.publish("news", "second", user_id="u", agent_id="a")
    assert [d.cube.content for d in mem.poll("news", "early")] == ["first", "second"]
    assert [d.cube.content for d in mem.poll("news", "late")] == ["second"]
    mem.subscribe("news", "early", start="latest")  # re-subscribing keeps the cursor
    assert len(mem.poll("news", "early")) == 2
    ch = mem.channels()[0]
    assert ch.name == "news" and ch.published == 2 and ch.subscribers == ["early", "late"]


def test_scope_and_visibility_are_respected(mem: MemOS) -> None:
    private = mem.add("my PIN is 0000", user_id="alice")[0]
    with pytest.raises(ScopeViolation):
        mem.publish("leaks", private, user_id="alice")
    shared = mem.add("Team lunch on Friday", user_id="alice", visibility="shared")[0]
    with pytest.raises(NotFound):  # bob cannot publish alice's cube
        mem.publish("leaks", cube_ids=[shared.id], user_id="bob")
    mem.subscribe("team", "bob")
    mem.publish("team", cube_ids=[shared.id], user_id="alice")
    mem.publish("team", "Bring snacks", user_id="alice")
    mem.delete(shared.id)
    assert [d.cube.content for d in mem.poll("team", "bob")] == ["Bring snacks"]
    assert mem.search("lunch snacks", user_id="bob", k=5) == []  # delivery is not a copy


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.publish("bad name!", "x", user_id="u"),
        lambda m: m.publish("", "x", user_id="u"),
        lambda m: m.publish("ok", None, user_id="u"),
        lambda m: m.publish("ok", "   ", user_id="u"),
        lambda m: m.poll("never-subscribed", "x"),
        lambda m: m.ack("never-subscribed", "x", 1),
        lambda m: m.subscribe("ok", "x", start="middle"),
        lambda m: m.poll("ok", "x", limit=0),
    ],
)
def test_bad_channel_calls_are_clear_errors(mem: MemOS, call) -> None:
    with pytest.raises((InvalidInput, NotFound)):
        call(mem)
    assert all(c.published == 0 for c in mem.channels())


def test_channels_work_across_processes(mem: MemOS, data_dir) -> None:
    mem.subscribe("xproc", "agent:reader")
    script = textwrap.dedent(
        f"""
        from memos_agents import MemOS
        mem = MemOS.open({str(data_dir)!r})
        mem.publish("xproc", ["from another process", "and another"], user_id="w", agent_id="w")
        mem.close()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    got = mem.poll("xproc", "agent:reader")
    assert [d.cube.content for d in got] == ["from another process", "and another"]
    mem.ack("xproc", "agent:reader", got[-1].seq)

    reopened = MemOS.open(data_dir, embedder=mem.vault.embedder)
    assert reopened.poll("xproc", "agent:reader") == []  # the cursor is durable
    reopened.close()


async def test_async_channel_calls(mem: MemOS) -> None:
    await mem.asubscribe("a", "s")
    await mem.apublish("a", "hello", user_id="u")
    got = await mem.apoll("a", "s")
    assert await mem.aack("a", "s", got[0].seq) == got[0].seq
    assert [c.name for c in await mem.achannels()] == ["a"]
