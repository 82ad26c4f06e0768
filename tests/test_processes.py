"""Several OS processes writing one deployment through the facade (a SQLite data dir, and a
PostgreSQL catalog), and kill -9 during writes: no acknowledged write is lost, no update is
lost under `expected_version`, the audit chain verifies, a bystander is unchanged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memos_agents import MemOS
from memos_agents.graph.falkordb_server import stop_server

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import pathlib, sys, time
from memos_agents import MemOS, Conflict
d, url, tag, counter = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[5]
n = int(sys.argv[4])
mem = MemOS.open(d, catalog_url=url or None, graph_idle_timeout=60)
ack = open(d.parent / f"ack-{tag}", "a")
(d.parent / f"ready-{tag}").touch()
while not (d.parent / "go").exists():
    time.sleep(0.01)
i = 0
while n < 0 or i < n:
    c = mem.add(f"{tag} logbook entry {i}: {tag} reached checkpoint {i}", user_id=tag)[0]
    ack.write(c.id + "\n"); ack.flush()   # acknowledged: add returned
    if counter:
        while True:   # a read-modify-write that must never lose an increment
            cur = mem.get(counter)
            try:
                mem.update(counter, f"count {int(cur.content.split()[1]) + 1}",
                           expected_version=cur.lifecycle.version)
                break
            except Conflict:
                pass
    i += 1
mem.close()
"""


def _start(d: Path, url: str, tags: list[str], n: int, counter: str = "") -> list:
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(d), url, t, str(n), counter],
                         cwd=ROOT, stderr=(d.parent / f"{t}.err").open("w"),
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
        for t in tags
    ]
    deadline = time.monotonic() + 120
    while not all((d.parent / f"ready-{t}").exists() for t in tags):
        dead = [t for t, p in zip(tags, procs, strict=True) if p.poll() is not None]
        assert not dead, (d.parent / f"{dead[0]}.err").read_text()
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)
    (d.parent / "go").touch()
    return procs


def _acked(d: Path, tag: str) -> list[str]:
    f = d.parent / f"ack-{tag}"
    return [line for line in f.read_text().splitlines() if line] if f.exists() else []


def _bystander(mem: MemOS) -> list[tuple[str, int, str]]:
    return sorted((c.id, c.lifecycle.version, c.content) for c in mem.list(user_id="bystander"))


@pytest.fixture
def deployment(catalog_url: str, tmp_path: Path, embedder):
    """A data dir (with its catalog on SQLite or the local PostgreSQL), opened first by the
    test as a deployment is initialised, with a bystander's memory and a shared counter."""
    d = tmp_path / "memos"
    url = "" if catalog_url.startswith("sqlite") else catalog_url
    mem = MemOS.open(d, embedder=embedder, catalog_url=url or None, graph_idle_timeout=60)
    mem.add("The bystander keeps bees on the roof.", user_id="bystander")
    counter = mem.add("count 0", user_id="shared")[0]
    yield d, url, mem, counter
    mem.close()
    stop_server(d / "graph")


@pytest.mark.parametrize("procs", [2, 3])
def test_processes_writing_one_deployment_lose_nothing(deployment, procs: int) -> None:
    d, url, mem, counter = deployment
    before = _bystander(mem)
    n, tags = 6, [f"w{i}" for i in range(procs)]
    workers = _start(d, url, tags, n, counter.id)
    for t, w in zip(tags, workers, strict=True):
        assert w.wait(timeout=300) == 0, (d.parent / f"{t}.err").read_text()
    fresh = MemOS.open(d, embedder=mem.vault.embedder, catalog_url=url or None)
    try:
        for t in tags:
            acked = _acked(d, t)
            assert len(acked) == n
            assert {c.id for c in fresh.list(user_id=t)} == set(acked)
            hit = fresh.search(f"{t} reached checkpoint 3", user_id=t, k=n)
            assert {h.cube.id for h in hit} == set(acked)
        assert fresh.get(counter.id).content == f"count {procs * n}"  # no lost update
        assert [v.version for v in fresh.history(counter.id)] == list(range(1, procs * n + 2))
        assert fresh.verify_audit() == (True, None)
        assert _bystander(fresh) == before
    finally:
        fresh.close()


def test_kill_9_during_writes_loses_no_acknowledged_write(deployment) -> None:
    d, url, mem, _ = deployment
    before = _bystander(mem)
    [victim, steady] = _start(d, url, ["k1", "k2"], -1)
    deadline = time.monotonic() + 240
    while len(_acked(d, "k1")) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    steady.send_signal(signal.SIGKILL)
    steady.wait(timeout=30)
    acked = {t: _acked(d, t) for t in ("k1", "k2")}
    assert len(acked["k1"]) >= 4
    fresh = MemOS.open(d, embedder=mem.vault.embedder, catalog_url=url or None)  # reconciles
    try:
        for t, ids in acked.items():
            stored = {c.id for c in fresh.list(user_id=t, limit=1000)}
            assert set(ids) <= stored, f"{t}: acknowledged writes lost"
            found = {h.cube.id for h in fresh.search(f"{t} logbook entry", user_id=t, k=1000)}
            assert set(ids) <= found, f"{t}: acknowledged writes not searchable"
        assert fresh.stats()["pending_index"] == 0
        assert fresh.verify_audit() == (True, None)
        assert _bystander(fresh) == before
    finally:
        fresh.close()


OPENER = r"""
import pathlib, sys, time
from memos_agents import MemOS
d, url = pathlib.Path(sys.argv[1]), sys.argv[2]
(d.parent / f"ready-{d.name}").touch()
while not (d.parent / "go").exists():
    time.sleep(0.005)
mem = MemOS.open(d, catalog_url=url, graph_idle_timeout=30)
mem.add(f"opened by {d.name}", user_id=d.name)
mem.close()
"""


def test_processes_opening_a_new_postgresql_catalog_at_once(tmp_path: Path, monkeypatch) -> None:
    """Three data dirs sharing one new PostgreSQL catalog (and so one audit key), opened at
    the same moment: every table is created once, no open fails."""
    import uuid

    import sqlalchemy as sa

    from tests.conftest import PG_URL, _pg_available

    if not _pg_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    eng = sa.create_engine(PG_URL)
    with eng.begin() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MEMOS_AUDIT_KEY": "a shared key for three dirs"}
    dirs = [tmp_path / f"dir{i}" for i in range(3)]
    try:
        procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(d), url], cwd=ROOT, env=env,
                                  stderr=(tmp_path / f"{d.name}.err").open("w")) for d in dirs]
        while not all((tmp_path / f"ready-{d.name}").exists() for d in dirs):
            assert all(p.poll() is None for p in procs)
            time.sleep(0.02)
        (tmp_path / "go").touch()
        for d, p in zip(dirs, procs, strict=True):
            assert p.wait(timeout=300) == 0, (tmp_path / f"{d.name}.err").read_text()
        monkeypatch.setenv("MEMOS_AUDIT_KEY", env["MEMOS_AUDIT_KEY"])
        mem = MemOS.open(dirs[0], catalog_url=url)
        try:
            assert mem.verify_audit() == (True, None)
            assert sorted(c.content for d in dirs for c in mem.list(user_id=d.name)) == [
                f"opened by {d.name}" for d in dirs]
        finally:
            mem.close()
    finally:
        for d in dirs:
            stop_server(d / "graph")
        with eng.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        eng.dispose()
