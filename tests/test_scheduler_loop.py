"""The scheduler inside the loop, on the real model process (the session's, from
tests/test_model.py): `MemOS.open(scheduler=...)` runs the worker, reads make memories hot and
the worker promotes them with no `tick()`, `generate` without a plan uses the hot KV cache (same
greedy reply as the same memories sent as text), a principal gets only what it may read, a
restart keeps the hot set, and the KV budget evicts the cache (never the plaintext)."""

from __future__ import annotations

import time

import pytest

from memos_agents import MemOS
from memos_agents.cube import Form, State
from memos_agents.model.memory import runtime
from memos_agents.scheduler import MemScheduler
from tests.conftest import share_blobs
from tests.test_model import FACTS

Q = "What is Alice's cat called?"


def _open(data_dir, embedder, host: MemOS) -> MemOS:
    mem = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30, scheduler=0.5)
    client = runtime(host).client
    mem.model(client.url, api_key=client.api_key)
    return mem


def _settled(sched: MemScheduler, timeout: float = 120.0) -> None:
    """Wait until the worker has nothing queued or running and the policies propose no
    promotion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = sched.jobs("queued") + sched.jobs("running")
        if not busy and not [p for p in sched.scan(user_id="alice") if p.kind == "promote"]:
            return
        time.sleep(0.3)
    pytest.fail(f"the scheduler did not settle: {sched.status()['decisions'][:3]}")


def test_the_worker_promotes_and_generation_uses_the_hot_cache(
    data_dir, embedder, model_host
):
    share_blobs(data_dir, model_host)
    mem = _open(data_dir, embedder, model_host)
    try:
        sched = mem.scheduler
        assert sched.running and sched.status()["running"]
        cubes = mem.add([*FACTS, "Bob likes chess.", "The weather was mild in May."],
                        user_id="alice")
        for _ in range(3):
            mem.search(Q, user_id="alice", k=2)
        deadline = time.monotonic() + 120  # the worker's pass, no tick() here
        while not [j for j in sched.jobs("done") if j.kind == "promote"]:
            assert time.monotonic() < deadline, sched.status()["decisions"]
            time.sleep(0.2)
        _settled(sched)
        [hot] = sched.status()["hot"]
        act = mem.get(hot["cube_id"])
        assert act.form is Form.activation and hot["user_id"] == "alice"
        sched.stop()  # no rebuild between the replies compared below

        planned = mem.generate(Q, user_id="alice", max_tokens=16)
        assert planned.planned and planned.activation == act.id and planned.cached_tokens > 0
        assert any("skips re-reading" in n for n in planned.notes)
        as_text = mem.generate(Q, user_id="alice", plan=False, max_tokens=16,
                               memories=[*act.provenance.derived_from, *planned.plaintext])
        assert as_text.activation is None and as_text.cached_tokens == 0
        assert as_text.text == planned.text  # greedy: the cache changes speed, not the reply
        bare = mem.generate(Q, user_id="alice", plan=False, max_tokens=16)
        assert not bare.planned and bare.activation is None and bare.plaintext == []

        # a reader of the vault shown one fact: the private cache is not used for it
        mem.grant_role(mem.config.vault, "user:bob", "reader")
        mem.share(cubes[0].id, "user:bob", "read")
        n = len(mem.audit_log())
        bob = mem.as_principal("user:bob").generate(Q, user_id="alice", max_tokens=8)
        assert bob.activation is None and bob.cached_tokens == 0
        assert bob.plaintext == [cubes[0].id]
        assert any(f"activation {act.id} skipped: not readable" in x for x in bob.notes)
        mine = [e for e in mem.audit_log()[n:] if e.principal == "user:bob"]
        assert [(e.op, e.outcome, e.cube_ids) for e in mine] == [
            ("generate", "ok", [cubes[0].id])
        ]
        sched.start(interval=0.5)
        _settled(sched)
        before = mem.get(act.id)
        n_promotes = len([j for j in sched.jobs(limit=500) if j.kind == "promote"])
    finally:
        mem.close()

    again = _open(data_dir, embedder, model_host)  # a restart: the same hot set, not rebuilt
    try:
        sched = again.scheduler
        assert sched.running
        time.sleep(2.0)  # a few policy passes
        assert len([j for j in sched.jobs(limit=500) if j.kind == "promote"]) == n_promotes
        kept = again.get(act.id)
        assert kept.lifecycle.version == before.lifecycle.version
        assert kept.provenance.derived_from == before.provenance.derived_from
        sched.stop()
        reply = again.generate(Q, user_id="alice", max_tokens=16)
        assert reply.activation == act.id and reply.cached_tokens > 0

        # over the KV budget the cache is demoted (blob gone), the plaintext stays
        sched.set_policy(kv_budget_bytes=1)
        assert [j.kind for j in sched.tick(user_id="alice")] == ["demote"]
        [done] = sched.run_pending()
        assert done.state == "done" and done.result == {"demoted": [act.id]}
        assert again.get(act.id).lifecycle.state is State.archived
        assert not (again.config.data_dir / "blobs" / kept.content).exists()
        assert all(again.get(c.id).lifecycle.state is State.active for c in cubes)
        assert sched.usage()["kv"]["cubes"] == 0
        after = again.generate(Q, user_id="alice", max_tokens=16)
        assert after.activation is None and after.cached_tokens == 0 and after.plaintext
    finally:
        again.close()
