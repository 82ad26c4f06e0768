"""MemScheduler on the real embedded stores: policies (hot, cold, stable, idle), durable jobs,
the background worker, task plans and the CLI. Jobs that need the model process run with stub
handlers here; tests/test_model.py runs a real promotion."""

from __future__ import annotations

import functools
import json
import os
import socket
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from memos_agents import MemOS
from memos_agents.blobs import kv_name
from memos_agents.cli import app
from memos_agents.cube import Form, MemCube, Provenance, Scope, SourceKind, State, utcnow
from memos_agents.errors import InvalidInput
from memos_agents.jobs import jobs_table
from memos_agents.model.memory import lora_name
from memos_agents.scheduler import MemScheduler

DAY = 86400.0


def _reads(mem: MemOS, cubes: list[MemCube], times: int, at=None) -> None:
    for _ in range(times):
        mem.vault.catalog.touch([c.id for c in cubes], at or utcnow())


def _derived(mem: MemOS, form: Form, sources: list[MemCube], **meta) -> MemCube:
    cube = MemCube(
        form=form,
        content=meta.pop("content", f"{form.value}/x"),
        scope=Scope(vault=mem.config.vault, user_id="alice"),
        provenance=Provenance(
            source_kind=SourceKind.derived,
            derived_from=[c.id for c in sources],
            created_by="test",
        ),
        metadata={"sources": [[c.id, c.lifecycle.version, ""] for c in sources], **meta},
    )
    mem.vault.add([cube], created_by="test")
    return cube


def test_hot_memories_are_proposed_for_activation_within_the_token_budget(mem):
    facts = [
        f"Fact number {i} about Alice, who lives in a small house by the sea." for i in range(6)
    ]
    cubes = mem.add(facts, user_id="alice")
    sched = mem.scheduler
    assert sched.scan(user_id="alice") == []  # nothing read yet
    _reads(mem, cubes[:3], 3)
    _reads(mem, cubes[3:4], 2)  # below hot_min_access
    [prop] = [p for p in sched.scan(user_id="alice") if p.kind != "distil"]
    assert prop.kind == "promote" and set(prop.cube_ids) == {c.id for c in cubes[:3]}
    assert "read >= 3 times" in prop.reason and prop.params == {"name": "hot"}
    # outside the recency window nothing is hot any more
    later = utcnow() + timedelta(days=8)
    assert "promote" not in [p.kind for p in sched.scan(user_id="alice", now=later)]
    sched.set_policy(hot_max_tokens=64)  # room for the header and only a couple of memories
    small = sched.hot_set(mem.config.vault, "alice")
    assert 0 < len(small) < 3
    fresh = MemScheduler(
        mem.vault.catalog,
        mem.model_memory,
        search=mem.search,
        sweep=mem.sweep,
        write_version=mem.vault.write_version,
        audit=functools.partial(mem.governance.audit, "system"),
    )
    assert fresh.policy.hot_max_tokens == 64  # the policy is kept in the catalog
    with pytest.raises(InvalidInput):
        sched.set_policy(hot_min_access=0)


def test_cold_archive_stable_distil_and_idle_demote(mem):
    sched = mem.scheduler
    sched.set_policy(cold_max_importance=1.0)
    lore = mem.add(
        [f"Dragons of kind {i} breathe fire." for i in range(4)], user_id="alice", tags=["dragons"]
    )
    other = mem.add(["A note nobody reads."], user_id="alice")
    blob = mem.config.data_dir / "blobs" / kv_name("1d" * 32)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(b"x")
    act = _derived(mem, Form.activation, lore[:1], content=kv_name("1d" * 32), name="old")

    soon = utcnow() + timedelta(days=8)
    props = sched.scan(user_id="alice", now=soon)
    assert {p.kind for p in props} == {"distil"}  # a stable cluster (by topic, else tag)
    [cluster] = props
    assert set(cluster.cube_ids) == {c.id for c in lore} and "none changed" in cluster.reason
    assert cluster.params["name"] in {"dragons", lore[0].organisation.topic}
    assert sched.tick(user_id="alice", now=soon) == []  # distillation only on request / policy
    sched.handlers["distil"] = lambda job: {"stub": len(job.params["cube_ids"])}
    assert [j.kind for j in sched.tick(user_id="alice", now=soon, distil=True)] == ["distil"]
    assert sched.run_pending()[0].result == {"stub": 4}
    _derived(mem, Form.parameter, lore)  # once distilled, the cluster is covered
    assert "distil" not in {p.kind for p in sched.scan(user_id="alice", now=soon)}

    much_later = utcnow() + timedelta(days=120)
    kinds = {p.kind: p for p in sched.scan(user_id="alice", now=much_later)}
    assert set(kinds) == {"archive", "demote"}
    assert set(kinds["archive"].cube_ids) == {c.id for c in [*lore, *other]}
    assert kinds["demote"].cube_ids == [act.id] and "unused" in kinds["demote"].reason
    jobs = sched.tick(user_id="alice", now=much_later)
    assert sorted(j.kind for j in jobs) == ["archive", "demote"]
    done = sched.run_pending()
    assert all(j.state == "done" for j in done), [j.error for j in done]
    assert mem.get(other[0].id).lifecycle.state is State.archived
    assert mem.history(other[0].id)[-1].op == "archive"
    assert mem.search("note nobody reads", user_id="alice") == []  # archived: not served
    assert mem.get(act.id).lifecycle.state is State.archived and not blob.exists()


def test_jobs_are_durable_deduplicated_and_recovered(data_dir, embedder, mem):
    cubes = mem.add(["Alice likes tea.", "Alice likes jazz."], user_id="alice")
    sched = mem.scheduler
    job = sched.promote("alice", [c.id for c in cubes])
    assert job is not None and job.state == "queued" and job.reason == "on request"
    assert sched.promote("alice", [c.id for c in cubes]) is None  # same job already queued
    assert sched.status()["counts"] == {"queued": 1}
    mem.close()

    again = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30)
    try:
        sched = again.scheduler
        assert [j.id for j in sched.jobs(state="queued")] == [job.id]
        # a worker that died mid-job (its pid is gone): the job is run again
        dead = f"{socket.gethostname()}:{2**22 + 12345}:gone"
        with again.vault.catalog.engine.begin() as conn:
            conn.execute(
                update(jobs_table())
                .where(jobs_table().c.id == job.id)
                .values(
                    state="running",
                    worker=dead,
                    attempts=1,
                    started_at=time.time(),
                    heartbeat_at=time.time(),
                )
            )
        calls = []
        sched.handlers["promote"] = lambda j: calls.append(j.id) or {"ok": True}
        [ran] = sched.run_pending()
        assert ran.id == job.id and ran.state == "done" and ran.attempts == 2 and calls
        # a handler error is kept on the job, visible, and can be retried
        sched.handlers["archive"] = lambda j: (_ for _ in ()).throw(InvalidInput("boom"))
        from memos_agents.scheduler import Proposal

        bad = sched.submit(
            Proposal(
                kind="archive", vault="default", user_id="alice", cube_ids=["x"], reason="test"
            )
        )
        [failed] = sched.run_pending()
        assert failed.id == bad.id and failed.state == "failed" and failed.error == "boom"
        assert sched.retry(bad.id) and sched.get(bad.id).state == "queued"
        assert sched.cancel(bad.id) and sched.get(bad.id).state == "cancelled"
    finally:
        again.close()


def test_background_worker_runs_jobs(mem):
    cubes = mem.add(["Alice likes tea."], user_id="alice")
    sched = mem.scheduler
    sched.handlers["promote"] = lambda j: {"pid": os.getpid()}
    sched.start(interval=0.2, policies=False)
    try:
        job = sched.promote("alice", [cubes[0].id])
        done = sched.wait(job.id, timeout=30)
        assert done.state == "done" and done.result == {"pid": os.getpid()}
        assert done.worker == sched.worker_id and sched.running
    finally:
        sched.stop()
    assert not sched.running


def test_plan_orders_parameter_activation_plaintext_and_says_why(mem):
    cubes = mem.add(
        [
            "Alice's cat is named Biscuit.",
            "Alice's cat likes tuna.",
            "Alice works in Lisbon.",
            "Alice drives a red car.",
        ],
        user_id="alice",
        tags=["alice"],
    )
    task = "What does Alice's cat like to eat?"
    plan = mem.scheduler.plan(task, user_id="alice", k=3)
    assert [s.form for s in plan.steps] == [Form.plaintext] and plan.parameter is None
    param = _derived(mem, Form.parameter, cubes[:2], name="cats", model="m", revision="r")
    act = _derived(mem, Form.activation, cubes[:2], adapter=lora_name(param), tokens=30)
    plan = mem.scheduler.plan(task, user_id="alice", k=3)
    assert [s.form for s in plan.steps] == [Form.parameter, Form.activation, Form.plaintext]
    assert plan.parameter == param.id and plan.activation == act.id
    assert not set(plan.plaintext) & {c.id for c in cubes[:2]}
    assert "no prompt tokens" in plan.steps[0].reason
    assert "skips re-reading" in plan.steps[1].reason
    assert "sent as text after the cached block" in plan.steps[2].reason
    assert "1. parameter" in plan.explain()
    # a source changes: the cache is stale, the plan skips it and says so
    mem.update(cubes[1].id, "Alice's cat likes salmon.", user_id="alice")
    plan = mem.scheduler.plan(task, user_id="alice", k=3)
    assert plan.activation is None and any("stale" in n for n in plan.notes)


def test_scheduler_cli(data_dir, mem):
    runner = CliRunner()
    cubes = mem.add(["Alice likes tea.", "Alice likes jazz."], user_id="alice")
    _reads(mem, cubes, 3)
    mem.scheduler.promote("alice", [cubes[0].id])
    d = ["--dir", str(data_dir)]
    out = runner.invoke(app, ["scheduler", "status", "--json", *d], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    st = json.loads(out.stdout)
    assert st["counts"] == {"queued": 1} and st["jobs"][0]["kind"] == "promote"
    out = runner.invoke(app, ["scheduler", "status", *d], catch_exceptions=False)
    assert "promote" in out.stdout and "queued" in out.stdout
    out = runner.invoke(app, ["scheduler", "scan", "--user", "alice", *d], catch_exceptions=False)
    assert json.loads(out.stdout)[0]["kind"] == "promote"
    out = runner.invoke(
        app,
        ["scheduler", "plan", "what does alice like?", "--user", "alice", "--json", *d],
        catch_exceptions=False,
    )
    assert json.loads(out.stdout)["steps"][0]["form"] == "plaintext"
    out = runner.invoke(
        app, ["scheduler", "policy", "--set", "hot_min_access=5", *d], catch_exceptions=False
    )
    assert json.loads(out.stdout)["hot_min_access"] == 5


def test_job_store_claims_finishes_and_recovers(mem):
    from memos_agents.jobs import JobStore

    store = JobStore(mem.vault.catalog.engine)
    job = store.submit(
        kind="archive",
        vault="default",
        user_id="alice",
        params={"cube_ids": ["a"]},
        reason="test",
        dedup_key="k1",
        created_by="test",
    )
    assert job is not None and job.state == "queued"
    assert (
        store.submit(
            kind="archive",
            vault="default",
            user_id="alice",
            params={},
            reason="again",
            dedup_key="k1",
            created_by="test",
        )
        is None
    )  # deduplicated while queued
    gone = f"{socket.gethostname()}:{2**22 + 54321}:gone"
    claimed = store.claim(gone, lease_s=900, max_attempts=2)
    assert claimed is not None and claimed.id == job.id and claimed.state == "running"
    assert store.claim("other", lease_s=900, max_attempts=2) is not None  # dead pid: taken over
    done = store.finish(store.get(job.id), "other", {"ok": 1}, None)
    assert done.state == "done" and done.result == {"ok": 1} and done.attempts == 2
    assert store.counts() == {"done": 1} and [j.id for j in store.list()] == [job.id]


def test_activation_and_parameter_metadata_are_typed_under_the_same_keys(mem):
    from memos_agents.cube import ActivationMeta, ParameterMeta

    cubes = mem.add(["Alice likes tea."], user_id="alice")
    act = _derived(mem, Form.activation, cubes, name="hot", tokens=12, custom="kept")
    meta = ActivationMeta.from_cube(mem.get(act.id))
    assert meta.name == "hot" and meta.tokens == 12 and meta.adapter is None
    assert meta.source_versions == {cubes[0].id: 1}
    assert meta.to_metadata()["custom"] == "kept"  # keys the model does not name survive
    assert (
        ParameterMeta.model_validate({"sources": None, "loss_end": 0.5}).to_metadata()["loss_end"]
        == 0.5
    )


def _cache(mem: MemOS, user: str, sources: list[MemCube], size: int) -> MemCube:
    """A live KV cache cube named "hot" of `user`, `size` bytes, made from `sources`."""
    cube = MemCube(
        form=Form.activation,
        content=kv_name(uuid.uuid4().hex * 2),
        scope=Scope(vault=mem.config.vault, user_id=user),
        provenance=Provenance(
            source_kind=SourceKind.derived, derived_from=[c.id for c in sources], created_by="t"
        ),
        metadata={
            "sources": [[c.id, c.lifecycle.version, ""] for c in sources],
            "name": "hot",
            "bytes": size,
            "tokens": 10,
        },
    )
    mem.vault.add([cube], created_by="test")
    return cube


def test_byte_budgets_demote_the_least_recently_used_until_it_is_read_again(mem):
    sched = mem.scheduler
    alice = mem.add(["Alice likes tea.", "Alice likes jazz."], user_id="alice")
    bob = mem.add(["Bob likes chess.", "Bob likes rain."], user_id="bob")
    _reads(mem, bob, 3)
    _reads(mem, alice, 3)
    old = _cache(mem, "bob", bob, 100)
    new = _cache(mem, "alice", alice, 100)
    mem.vault.catalog.touch([old.id], utcnow() - timedelta(hours=1))
    mem.vault.catalog.touch([new.id], utcnow())
    assert sched.scan() == []  # both fit the default budget (1 GiB)
    assert sched.usage()["kv"] == {"budget": 1 << 30, "used": 200, "cubes": 2}
    sched.set_policy(kv_budget_bytes=150)
    [prop] = sched.scan()
    assert prop.kind == "demote" and prop.cube_ids == [old.id] and prop.user_id == "bob"
    assert "KV budget: 200 bytes live, budget 150" in prop.reason
    assert [j.kind for j in sched.tick()] == ["demote"]
    [done] = sched.run_pending()
    assert done.state == "done" and done.result == {"demoted": [old.id]}
    assert mem.get(old.id).lifecycle.state is State.archived
    assert all(mem.get(c.id).lifecycle.state is State.active for c in bob)  # plaintext stays
    assert sched.usage()["kv"]["used"] == 100
    # bob's memories are still hot, but not read since the demotion: they stay plaintext
    assert sched.scan() == []
    _reads(mem, bob, 1)
    [again] = sched.scan(user_id="bob")
    assert again.kind == "promote" and set(again.cube_ids) == {c.id for c in bob}
    st = sched.status()
    assert st["budgets"]["kv"]["budget"] == 150 and [h["cube_id"] for h in st["hot"]] == [new.id]
    [decision] = [d for d in st["decisions"] if d["kind"] == "demote"]
    assert decision["cube_ids"] == [old.id] and "budget" in decision["reason"]


def test_the_open_switch_starts_a_worker_every_process_sees(data_dir, embedder, monkeypatch):
    from memos_agents.settings import SCHEDULER_ENV

    on = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30, scheduler=0.2)
    try:
        assert on.scheduler.running
        monkeypatch.setenv(SCHEDULER_ENV, "off")
        other = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30)
        try:
            deadline = time.monotonic() + 10
            while not other.scheduler.status()["running"] and time.monotonic() < deadline:
                time.sleep(0.1)
            st = other.scheduler.status()
            assert st["running"] and not st["worker"]["running"]  # the other process's worker
            assert list(st["workers"]) == [on.scheduler.worker_id]
            on.close()
            assert not other.scheduler.status()["running"]  # stopped: its heartbeat is gone
        finally:
            other.close()
        monkeypatch.setenv(SCHEDULER_ENV, "0.5")
        env_on = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30)
        assert env_on.scheduler.running
        env_on.close()
        monkeypatch.setenv(SCHEDULER_ENV, "sometimes")
        with pytest.raises(InvalidInput, match=SCHEDULER_ENV):
            MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30)
        with pytest.raises(InvalidInput):
            MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30, scheduler=-1)
    finally:
        on.close()


def test_a_failed_change_waits_before_the_policies_queue_it_again(mem):
    cubes = mem.add(["Alice likes tea.", "Alice likes jazz."], user_id="alice")
    _reads(mem, cubes, 3)
    sched = mem.scheduler
    sched.handlers["promote"] = lambda j: (_ for _ in ()).throw(InvalidInput("no model"))
    assert [j.kind for j in sched.tick(user_id="alice")] == ["promote"]
    [failed] = sched.run_pending()
    assert failed.state == "failed" and failed.error == "no model"
    assert sched.tick(user_id="alice") == []  # not every pass: it waits retry_failed_after_s
    sched.set_policy(retry_failed_after_s=0)
    assert [j.kind for j in sched.tick(user_id="alice")] == ["promote"]


def test_explain_says_which_hits_a_kv_cache_holds(mem):
    alice = mem.add(["Alice likes tea.", "Alice likes jazz."], user_id="alice")
    cache = _cache(mem, "alice", alice[:1], 10)
    res = mem.explain("What does Alice like to drink? tea", user_id="alice", k=2)
    assert res.explain.stages[-1].detail["hot"] == {alice[0].id: cache.id}
    mem.grant_role(mem.config.vault, "user:bob", "reader")
    mem.share(alice[0].id, "user:bob", "read")
    seen = mem.as_principal("user:bob").explain("tea", user_id="alice", k=2)
    assert [h.id for h in seen.hits] == [alice[0].id]
    assert seen.explain.stages[-1].detail["hot"] == {}  # the private cache is not shown
