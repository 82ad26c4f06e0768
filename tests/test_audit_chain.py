"""The audit chain under attack: several OS processes, kill -9, tampering with raw SQL, keys,
old dirs — on SQLite and on the local PostgreSQL (a private schema per test)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import delete, func, insert, select, update
from typer.testing import CliRunner

from memos_agents.audit import (
    GENESIS,
    KEY_FILE,
    AuditKeyMismatch,
    anchor_mac,
    audit_t,
    entry_mac,
    head_t,
    legacy_hash,
)
from memos_agents.catalog import Catalog
from memos_agents.errors import ConfigError, MemOSError
from memos_agents.governance import MemGovernance

ROOT = Path(__file__).resolve().parents[1]
ATTACKER_KEY = b"not the key, but a key all the same"

WORKER = r"""
import pathlib, sys, time
from memos_agents.catalog import Catalog
from memos_agents.governance import MemGovernance
url, d, n, tag = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
gov = MemGovernance(Catalog(url), data_dir=d)
(d / f"ready-{tag}").touch()
while not (d / "go").exists():
    time.sleep(0.002)
i = 0
while n < 0 or i < n:
    gov.audit(f"agent:{tag}", "add", cube_ids=[f"{tag}-{i}"], vault="v", detail=str(i))
    i += 1
"""


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch) -> None:
    monkeypatch.delenv("MEMOS_AUDIT_KEY", raising=False)


def open_gov(url: str, d: Path, key: bytes | None = None) -> MemGovernance:
    return MemGovernance(Catalog(url), data_dir=d, key=key)


def start_workers(url: str, d: Path, n: int, tags: list[str]) -> list[subprocess.Popen]:
    """Processes that open the new audit chain at once (the catalog's own tables made first:
    their creation is the catalog's business), then append `n` entries each (n < 0: until
    killed) once the `go` file appears."""
    Catalog(url).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, str(d), str(n), tag],
            cwd=ROOT,
            stderr=(d / f"{tag}.err").open("w"),
        )
        for tag in tags
    ]
    deadline = time.monotonic() + 60
    while not all((d / f"ready-{t}").exists() for t in tags):
        failed = [t for t, p in zip(tags, procs, strict=True) if p.poll() is not None]
        assert not failed, (d / f"{failed[0]}.err").read_text()
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.02)
    return procs


def count(gov: MemGovernance, principal: str | None = None) -> int:
    q = select(func.count()).select_from(audit_t)
    if principal is not None:
        q = q.where(audit_t.c.principal == principal)
    with gov.engine.connect() as conn:
        return conn.execute(q).scalar()


def assert_one_unforked_chain(gov: MemGovernance, expected: int) -> None:
    assert gov.verify_audit() == (True, None), gov.verify().reason
    entries = gov.audit_log(limit=100_000)
    assert len(entries) == expected == gov.verify().entries
    assert len({e.prev_hash for e in entries}) == expected  # no two entries share a parent
    assert [e.seq for e in entries] == list(range(1, expected + 1))


@pytest.mark.parametrize("procs", [2, 3])
def test_processes_appending_at_once_never_fork(catalog_url: str, tmp_path: Path, procs) -> None:
    n, tags = 150, [f"w{i}" for i in range(procs)]
    workers = start_workers(catalog_url, tmp_path, n, tags)
    gov = open_gov(catalog_url, tmp_path)
    (tmp_path / "go").touch()
    checks = 0
    try:
        while any(w.poll() is None for w in workers):
            # an honest dir verifies while others write (one snapshot of entries and anchor)
            assert gov.verify_audit() == (True, None), gov.verify().reason
            checks += 1
            time.sleep(0.1)
        for t, w in zip(tags, workers, strict=True):
            assert w.wait(timeout=60) == 0, (tmp_path / f"{t}.err").read_text()
    finally:
        for w in workers:
            w.kill()
    assert checks > 0
    assert_one_unforked_chain(gov, procs * n)
    got = {e.detail for e in gov.audit_log(limit=100_000) if e.principal == "agent:w0"}
    assert got == {str(i) for i in range(n)}


def test_kill_9_during_appends_leaves_a_chain_that_verifies(
    catalog_url: str, tmp_path: Path
) -> None:
    tags = ["a", "b", "c"]
    workers = dict(zip(tags, start_workers(catalog_url, tmp_path, -1, tags), strict=True))
    gov = open_gov(catalog_url, tmp_path)
    (tmp_path / "go").touch()
    try:
        for t, w in workers.items():  # each one killed mid-stream, the others still writing
            deadline = time.monotonic() + 60
            while count(gov, f"agent:{t}") < 40:
                assert w.poll() is None, (tmp_path / f"{t}.err").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.01)
            os.kill(w.pid, signal.SIGKILL)
            assert w.wait(timeout=30) == -signal.SIGKILL
            assert gov.verify_audit() == (True, None), gov.verify().reason
    finally:
        for w in workers.values():
            w.kill()
    gov.audit("system", "after-the-kills")
    assert_one_unforked_chain(gov, count(gov))
    assert gov.audit_log(limit=100_000)[-1].op == "after-the-kills"


# tampering: a chain of 20 entries, then raw SQL on the catalog as an attacker without the key


def _forged(seq: int, prev: str) -> dict:
    row = dict(
        at=time.time(),
        principal="user:mallory",
        op="grant_role",
        vault="v",
        cube_ids="[]",
        outcome="ok",
        detail="user:mallory=owner",
    )
    return {
        **row,
        "seq": seq,
        "prev_hash": prev,
        "hash": entry_mac(ATTACKER_KEY, seq, prev, _ns(row)),
    }


def _ns(d: dict) -> SimpleNamespace:
    return SimpleNamespace(**d)


def _rows(conn) -> list:
    return conn.execute(select(audit_t).order_by(audit_t.c.seq)).all()


def _edit_a_row(conn) -> int:
    conn.execute(update(audit_t).where(audit_t.c.seq == 5).values(outcome="denied"))
    return 5


def _delete_the_newest(conn) -> int:
    conn.execute(delete(audit_t).where(audit_t.c.seq > 17))
    return 18


def _delete_a_middle_row(conn) -> int:
    conn.execute(delete(audit_t).where(audit_t.c.seq == 9))
    return 9


def _delete_all(conn) -> int:
    conn.execute(delete(audit_t))
    return 1


def _recompute_unkeyed(conn) -> int:
    prev = GENESIS
    for r in _rows(conn):
        h = legacy_hash(prev, r)
        conn.execute(update(audit_t).where(audit_t.c.seq == r.seq).values(prev_hash=prev, hash=h))
        prev = h
    return 1


def _recompute_with_another_key(conn) -> int:
    """Edit entry 3 and re-hash everything from there, anchor included, with a key of one's own."""
    rows, prev = _rows(conn), None
    for r in rows:
        if r.seq < 3:
            prev = r.hash
            continue
        vals = r._asdict() | ({"outcome": "ok"} if r.seq == 3 else {})
        h = entry_mac(ATTACKER_KEY, r.seq, prev, _ns(vals))
        conn.execute(
            update(audit_t)
            .where(audit_t.c.seq == r.seq)
            .values(prev_hash=prev, hash=h, outcome=vals["outcome"])
        )
        prev = h
    head = conn.execute(select(head_t)).one()._asdict() | {"head_hash": prev}
    conn.execute(update(head_t).values(head_hash=prev, mac=anchor_mac(ATTACKER_KEY, _ns(head))))
    return 3


def _append_a_forged_row(conn) -> int:
    conn.execute(insert(audit_t).values(**_forged(21, _rows(conn)[-1].hash)))
    return 21


def _append_and_bump_the_anchor(conn) -> int:
    row = _forged(21, _rows(conn)[-1].hash)
    conn.execute(insert(audit_t).values(**row))
    conn.execute(update(head_t).values(entries=21, head_seq=21, head_hash=row["hash"]))
    return 21


def _edit_the_anchor(conn) -> int:
    conn.execute(update(head_t).values(entries=head_t.c.entries + 1))
    return 21


def _delete_the_anchor(conn) -> int:
    conn.execute(delete(head_t))
    return 21


def _truncate_and_match_the_anchor(conn) -> int:
    keep = _rows(conn)[16]
    conn.execute(delete(audit_t).where(audit_t.c.seq > 17))
    conn.execute(update(head_t).values(entries=17, head_seq=17, head_hash=keep.hash))
    return 18


def _drop_the_anchor_table(conn) -> int:
    head_t.drop(conn)
    return 21


def _delete_everything(conn) -> int:
    conn.execute(delete(audit_t))
    conn.execute(delete(head_t))
    return 1


TAMPER: dict[str, Callable] = {
    f.__name__.lstrip("_"): f
    for f in (
        _edit_a_row,
        _delete_the_newest,
        _delete_a_middle_row,
        _delete_all,
        _recompute_unkeyed,
        _recompute_with_another_key,
        _append_a_forged_row,
        _append_and_bump_the_anchor,
        _edit_the_anchor,
        _delete_the_anchor,
        _truncate_and_match_the_anchor,
        _drop_the_anchor_table,
        _delete_everything,
    )
}


@pytest.mark.parametrize("how", list(TAMPER))
def test_every_tampering_is_detected_and_stays_detected(
    catalog_url: str, tmp_path: Path, how: str
) -> None:
    gov = open_gov(catalog_url, tmp_path)
    for i in range(20):
        gov.audit("user:alice", "add", cube_ids=[f"c{i}"], vault="v")
    assert gov.verify_audit() == (True, None)
    with gov.engine.begin() as conn:
        bad = TAMPER[how](conn)
    verdict = gov.verify()
    assert (verdict.intact, verdict.first_bad_seq) == (False, bad), verdict.reason
    assert gov.verify_audit() == (False, bad) and verdict.reason
    # honest work goes on, and neither it nor a reopen launders the damage
    gov.audit("user:alice", "get", cube_ids=["c1"])
    again = open_gov(catalog_url, tmp_path)
    again.audit("user:bob", "get", cube_ids=["c2"])
    assert not again.verify().intact, again.verify().reason
    assert not gov.verify().intact


def test_an_untouched_chain_verifies_after_reopening(catalog_url: str, tmp_path: Path) -> None:
    gov = open_gov(catalog_url, tmp_path)
    gov.audit("user:alice", "add", cube_ids=["c"])
    again = open_gov(catalog_url, tmp_path)
    again.audit("user:bob", "get", cube_ids=["c"])
    assert again.verify_audit() == gov.verify_audit() == (True, None)
    assert gov.verify().entries == 2


# keys


def test_key_file_is_private_and_not_in_the_catalog(catalog_url: str, tmp_path: Path) -> None:
    gov = open_gov(catalog_url, tmp_path)
    gov.audit("user:alice", "add")
    key_path = tmp_path / KEY_FILE
    key = key_path.read_bytes()
    assert len(key) == 32 and stat.S_IMODE(key_path.stat().st_mode) == 0o600
    with gov.engine.connect() as conn:
        stored = json.dumps(
            [list(r) for t in (audit_t, head_t) for r in conn.execute(select(t))], default=str
        )
    assert key.hex() not in stored
    # whoever holds another key can neither verify nor extend the chain
    other = open_gov(catalog_url, tmp_path / "elsewhere")
    verdict = other.verify()
    assert not verdict.intact and "another key" in verdict.reason
    with pytest.raises(AuditKeyMismatch, match="MEMOS_AUDIT_KEY"):
        other.audit("user:mallory", "add")
    assert isinstance(AuditKeyMismatch("x"), MemOSError)
    assert gov.verify_audit() == (True, None)


def test_env_key_serves_several_data_dirs(catalog_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEMOS_AUDIT_KEY", "a shared secret of some length")
    one, two = open_gov(catalog_url, tmp_path / "one"), open_gov(catalog_url, tmp_path / "two")
    one.audit("user:alice", "add")
    two.audit("user:bob", "add")
    assert one.verify_audit() == two.verify_audit() == (True, None)
    assert not (tmp_path / "one" / KEY_FILE).exists()
    monkeypatch.setenv("MEMOS_AUDIT_KEY", "short")
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        open_gov(catalog_url, tmp_path / "three")


def test_without_a_data_dir_the_key_sits_beside_a_sqlite_catalog(
    catalog_url: str, tmp_path: Path
) -> None:
    cat = Catalog(catalog_url)
    if catalog_url.startswith("sqlite"):
        MemGovernance(cat).audit("user:alice", "add")
        assert len((tmp_path / KEY_FILE).read_bytes()) == 32
    else:  # a PostgreSQL catalog has no dir of its own: the key must be named
        with pytest.raises(ConfigError, match="MEMOS_AUDIT_KEY"):
            MemGovernance(cat)


def test_a_damaged_key_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"too short")
    with pytest.raises(ConfigError, match="damaged"):
        open_gov(f"sqlite:///{tmp_path / 'catalog.db'}", tmp_path)


# dirs from before keying


def _legacy_dir(url: str, n: int, broken_at: int | None = None) -> None:
    """The audit table as older versions wrote it: unkeyed SHA-256, no anchor table."""
    cat = Catalog(url)
    audit_t.create(cat.engine)
    prev = GENESIS
    with cat.engine.begin() as conn:
        for seq in range(1, n + 1):
            row = dict(
                at=1_700_000_000.0 + seq,
                principal="user:old",
                op="add",
                vault="v",
                cube_ids=json.dumps([f"old{seq}"]),
                outcome="ok",
                detail="",
            )
            h = legacy_hash(prev, _ns(row))
            if seq == broken_at:
                row["detail"] = "edited before the upgrade"
            conn.execute(insert(audit_t).values(seq=seq, prev_hash=prev, hash=h, **row))
            prev = h
    cat.close()


def test_an_old_dir_is_migrated_and_then_protected(catalog_url: str, tmp_path: Path) -> None:
    _legacy_dir(catalog_url, 12)
    gov = open_gov(catalog_url, tmp_path)
    assert gov.verify_audit() == (True, None)
    gov.audit("user:alice", "add", cube_ids=["new"])
    assert_one_unforked_chain(gov, 13)
    assert gov.audit_log()[-1].prev_hash == gov.audit_log()[-2].hash  # continues the old chain
    with gov.engine.begin() as conn:
        conn.execute(update(audit_t).where(audit_t.c.seq == 4).values(detail="rewritten"))
    assert gov.verify_audit() == (False, 4)


def test_an_old_chain_that_was_already_broken_stays_reported(
    catalog_url: str, tmp_path: Path
) -> None:
    _legacy_dir(catalog_url, 8, broken_at=3)
    gov = open_gov(catalog_url, tmp_path)
    gov.audit("user:alice", "add")
    verdict = gov.verify()
    assert (verdict.intact, verdict.first_bad_seq) == (False, 3)
    assert "already broken" in verdict.reason


@pytest.mark.embedded_only("edits the data dir's SQLite catalog file directly")
def test_cli_names_the_reason(data_dir: Path) -> None:
    from memos_agents.cli import app

    runner = CliRunner()
    d = ["--dir", str(data_dir)]
    for text in ("one", "two", "three"):
        assert runner.invoke(app, ["add", text, "--user", "alice", *d]).exit_code == 0
    ok = runner.invoke(app, ["audit", "verify", *d])
    assert ok.exit_code == 0 and "audit chain intact" in ok.output, ok.output
    cat = Catalog(f"sqlite:///{data_dir / 'catalog.db'}")
    with cat.engine.begin() as conn:
        last = conn.execute(select(func.max(audit_t.c.seq))).scalar()
        conn.execute(delete(audit_t).where(audit_t.c.seq == last))
    cat.close()
    broken = runner.invoke(app, ["audit", "verify", *d])
    assert broken.exit_code == 3, broken.output
    assert f"broken at entry {last}" in broken.output
    assert "missing at the end" in broken.output


# ownership is the scope's user, never a cube's created_by


def test_a_spoofed_created_by_grants_nothing(mem) -> None:
    from memos_agents.cube import MemCube, Provenance, Scope
    from memos_agents.governance import PermissionDenied

    forged = MemCube(
        content="Alice's PIN is 4321.",
        scope=Scope(user_id="alice"),
        provenance=Provenance(created_by="user:mallory"),
    ).seal()
    mem.vault.add([forged], created_by="user:mallory")
    mallory = mem.as_principal("user:mallory")
    for attempt in (
        lambda: mallory.get(forged.id),
        lambda: mallory.purge(forged.id),
        lambda: mallory.delete(forged.id),
        lambda: mallory.update(forged.id, "mine now"),
        lambda: mallory.history(forged.id),
    ):
        with pytest.raises(PermissionDenied, match="user:mallory may not"):
            attempt()
    assert mallory.list(user_id="alice") == []
    assert mallory.search("PIN", user_id="alice", k=5) == []
    assert mem.as_principal("user:alice").get(forged.id).content == "Alice's PIN is 4321."
    assert [v.version for v in mem.history(forged.id)] == [1]  # nothing was changed


def test_an_agent_writing_for_a_user_reaches_what_its_role_gives(mem) -> None:
    from memos_agents.governance import PermissionDenied

    mem.grant_role("default", "agent:planner", "writer")
    planner = mem.as_principal("agent:planner")
    shared = planner.add("The team meets on Mondays.", user_id="alice", visibility="shared")[0]
    private = planner.add("Alice's salary is 90k.", user_id="alice")[0]
    assert shared.provenance.created_by == private.provenance.created_by == "agent:planner"
    assert planner.get(shared.id).id == shared.id
    assert planner.update(shared.id, "The team meets on Tuesdays.").lifecycle.version == 2
    with pytest.raises(PermissionDenied):  # it wrote the cube, but Alice owns it
        planner.get(private.id)
    assert mem.as_principal("user:alice").get(private.id).content == "Alice's salary is 90k."
    mem.revoke_role("default", "agent:planner")
    with pytest.raises(PermissionDenied):
        planner.get(shared.id)
