"""Two worker OS processes serving one scale-out deployment: the catalog on the local
PostgreSQL, the vectors on a Chroma server, the graph on a FalkorDB TCP server (the session's
servers, tests/scaleout_servers.py). Each worker has a data dir of its own, so nothing is
shared on disk: the audit and catalog key comes from `MEMOS_AUDIT_KEY`, as on separate hosts.

They write concurrently (adds and read-modify-write updates of one counter); then one is killed
with SIGKILL mid-write while the other keeps serving: every acknowledged write is found (get and
search) by the survivor and by a freshly opened process, no update is lost, the audit chain
verifies and a bystander's memory is unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from memos_agents import MemOS
from tests.conftest import scaleout_stores

ROOT = Path(__file__).resolve().parents[1]
AUDIT_KEY = "one key for every worker of the scale-out deployment"

WORKER = r"""
import json, pathlib, sys, time
from memos_agents import MemOS, Conflict
run, tag, n, counter = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
mem = MemOS.open(run / f"dir-{tag}", graph_idle_timeout=60)   # the stores: MEMOS_* URLs
ack = open(run / f"ack-{tag}", "a")
inc = open(run / f"inc-{tag}", "a")
(run / f"ready-{tag}").touch()
while not (run / "go").exists():
    time.sleep(0.01)

def increment():   # a read-modify-write that must never lose an increment
    while True:
        cur = mem.get(counter)
        try:
            mem.update(counter, f"count {int(cur.content.split()[1]) + 1}",
                       expected_version=cur.lifecycle.version)
            return
        except Conflict:
            pass

def verify(other):   # every write the other worker acknowledged: get + search, from here
    ids = [i for i in (run / f"ack-{other}").read_text().splitlines() if i]
    got = [i for i in ids if mem.get(i, user_id=other).id == i]
    found = {h.cube.id for h in mem.search(f"{other} logbook entry", user_id=other, k=1000)}
    out = {"acked": len(ids), "got": len(got), "found": len(set(ids) & found)}
    (run / f"verified-{tag}").write_text(json.dumps(out))

i = 0
while n < 0 or i < n:
    c = mem.add(f"{tag} logbook entry {i}: {tag} reached checkpoint {i}", user_id=tag)[0]
    ack.write(c.id + "\n"); ack.flush()   # acknowledged: add returned
    if counter:
        increment()
        inc.write("1\n"); inc.flush()
    i += 1
    stop = run / f"stop-{tag}"
    if stop.exists():
        verify(stop.read_text().strip())
        break
mem.close()
"""


def _lines(run: Path, name: str) -> list[str]:
    f = run / name
    return [line for line in f.read_text().splitlines() if line] if f.exists() else []


def _start(run: Path, tags: list[str], n: int, counter: str) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(run), t, str(n), counter],
                         cwd=ROOT, env=env, stderr=(run / f"{t}.err").open("w"))
        for t in tags
    ]
    deadline = time.monotonic() + 120
    while not all((run / f"ready-{t}").exists() for t in tags):
        dead = [t for t, p in zip(tags, procs, strict=True) if p.poll() is not None]
        assert not dead, (run / f"{dead[0]}.err").read_text()
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)
    (run / "go").touch()
    return procs


def _wait_for(cond, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _bystander(mem: MemOS) -> list[tuple[str, int, str]]:
    return sorted((c.id, c.lifecycle.version, c.content) for c in mem.list(user_id="bystander"))


@pytest.fixture
def deployment(scaleout_services, tmp_path: Path, embedder, monkeypatch) -> Iterator[tuple]:
    """Fresh stores on the session's servers (a PostgreSQL schema, the Chroma server, a
    FalkorDB database), named to every process by `MEMOS_*`; initialised by this process
    with a bystander's memory and a shared counter."""
    with scaleout_stores(scaleout_services) as urls:
        for name, url in urls.items():
            monkeypatch.setenv(f"MEMOS_{name.upper()}", url)
        monkeypatch.setenv("MEMOS_AUDIT_KEY", AUDIT_KEY)
        mem = MemOS.open(tmp_path / "init", embedder=embedder)
        try:
            mem.add("The bystander keeps bees on the roof.", user_id="bystander")
            counter = mem.add("count 0", user_id="shared")[0]
            yield tmp_path, mem, counter
        finally:
            mem.close()
    for d in tmp_path.glob("*/"):
        assert not (d / "chroma").exists() and not (d / "graph").exists(), d


def _check_fresh(run: Path, embedder, acked: dict[str, list[str]], before: list) -> MemOS:
    """A freshly opened process's view: every acknowledged write got and found; audit ok."""
    fresh = MemOS.open(run / "fresh", embedder=embedder)  # reconciles a killed worker's pending
    for t, ids in acked.items():
        assert [fresh.get(i, user_id=t).id for i in ids] == ids, f"{t}: acknowledged writes lost"
        found = {h.cube.id for h in fresh.search(f"{t} logbook entry", user_id=t, k=1000)}
        assert set(ids) <= found, f"{t}: acknowledged writes not searchable"
    assert fresh.stats()["pending_index"] == 0
    assert fresh.verify_audit() == (True, None)
    assert _bystander(fresh) == before
    return fresh


def test_two_workers_writing_one_scaleout_deployment_lose_nothing(deployment, embedder) -> None:
    run, mem, counter = deployment
    before = _bystander(mem)
    n, tags = 6, ["w1", "w2"]
    for t, w in zip(tags, _start(run, tags, n, counter.id), strict=True):
        assert w.wait(timeout=300) == 0, (run / f"{t}.err").read_text()
    acked = {t: _lines(run, f"ack-{t}") for t in tags}
    assert all(len(ids) == n for ids in acked.values())
    fresh = _check_fresh(run, embedder, acked, before)
    try:
        assert {c.id for t in tags for c in fresh.list(user_id=t)} == {
            i for ids in acked.values() for i in ids}
        assert fresh.get(counter.id).content == f"count {2 * n}"  # no lost update
        assert [v.version for v in fresh.history(counter.id)] == list(range(1, 2 * n + 2))
    finally:
        fresh.close()


def test_kill_9_of_one_worker_loses_no_acknowledged_write(deployment, embedder) -> None:
    run, mem, counter = deployment
    before = _bystander(mem)
    victim, survivor = _start(run, ["k1", "k2"], -1, counter.id)
    _wait_for(lambda: len(_lines(run, "ack-k1")) >= 4, "the victim's writes")
    victim.send_signal(signal.SIGKILL)  # mid-write: it loops on add + update
    assert victim.wait(timeout=30) == -signal.SIGKILL
    after_kill = len(_lines(run, "ack-k2"))
    _wait_for(lambda: len(_lines(run, "ack-k2")) >= after_kill + 3, "the survivor's writes")
    (run / "stop-k2").write_text("k1")  # the survivor checks the victim's acks, then exits
    assert survivor.wait(timeout=120) == 0, (run / "k2.err").read_text()
    acked = {t: _lines(run, f"ack-{t}") for t in ("k1", "k2")}
    seen = json.loads((run / "verified-k2").read_text())
    assert seen == {"acked": len(acked["k1"]), "got": len(acked["k1"]),
                    "found": len(acked["k1"])}, "the survivor misses acknowledged writes"
    fresh = _check_fresh(run, embedder, acked, before)
    try:
        increments = sum(len(_lines(run, f"inc-{t}")) for t in ("k1", "k2"))
        count = int(fresh.get(counter.id).content.split()[1])
        # the victim may have died after its update committed, before it noted it
        assert increments <= count <= increments + 1, "an acknowledged update was lost"
        assert [v.version for v in fresh.history(counter.id)] == list(range(1, count + 2))
    finally:
        fresh.close()
