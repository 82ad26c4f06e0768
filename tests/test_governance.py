"""MemGovernance decisions, the audit chain, and redaction — on SQLite and PostgreSQL (the
audit chain under attack: tests/test_audit_chain.py)."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import update

from memos_agents.catalog import Catalog
from memos_agents.cube import MemCube, Provenance, Scope
from memos_agents.errors import InvalidInput
from memos_agents.governance import (
    Access,
    Action,
    MemGovernance,
    PermissionDenied,
    Role,
    audit_t,
)
from memos_agents.redaction import RedactionPolicy, redact


def cube(user: str, vault: str = "v", visibility: str = "private") -> MemCube:
    return MemCube(
        content=f"{user}'s note",
        scope=Scope(vault=vault, user_id=user),
        provenance=Provenance(created_by=f"user:{user}"),
        governance={"visibility": visibility},
    ).seal()


@pytest.fixture
def gov(catalog_url: str, tmp_path):
    cat = Catalog(catalog_url)
    yield MemGovernance(cat, data_dir=tmp_path)
    cat.close()


def test_roles_and_grants_given_by_several_admins_at_once(catalog_url: str, tmp_path) -> None:
    """Two admins granting the same principal the same vault role or cube at the same instant
    both succeed (one upsert each); the principal then holds one of the values granted."""
    from tests.conftest import at_once

    cats = [Catalog(catalog_url) for _ in range(4)]
    govs = [MemGovernance(c, data_dir=tmp_path) for c in cats]
    roles, access = ["reader", "writer", "reader", "writer"], ["read", "write", "read", "write"]

    def work(i: int, k: int) -> None:
        govs[i].grant_role(f"v{k}", "user:bob", roles[i], by=f"user:admin{i}")
        govs[i].share(f"cube-{k}", "user:bob", access[i], by=f"user:admin{i}")

    errors = at_once(len(govs), 10, work)
    assert not errors, errors[:2]
    for k in range(10):
        assert govs[0].role(f"v{k}", "user:bob") in (Role.reader, Role.writer)
        assert govs[0].grants([f"cube-{k}"], "user:bob")[f"cube-{k}"] in (Access.read,
                                                                            Access.write)
    for c in cats:
        c.close()


def test_owner_roles_grants_and_visibility(gov: MemGovernance) -> None:
    private, shared, public = (
        cube("alice"),
        cube("alice", visibility="shared"),
        cube("alice", visibility="public"),
    )
    cubes = [private, shared, public]
    assert gov.allowed("user:alice", Action.purge, cubes) == [True, True, True]
    assert gov.allowed("user:bob", Action.read, cubes) == [False, False, True]
    gov.grant_role("v", "user:bob", Role.reader, by="user:alice")
    assert gov.allowed("user:bob", Action.read, cubes) == [False, True, True]
    assert gov.allowed("user:bob", Action.write, cubes) == [False, False, False]
    gov.grant_role("v", "user:bob", "writer", by="user:alice")
    assert gov.allowed("user:bob", Action.write, cubes) == [False, True, True]
    gov.share(private.id, "user:bob", "read", by="user:alice")
    assert gov.allowed("user:bob", Action.read, [private]) == [True]
    assert gov.allowed("user:bob", Action.write, [private]) == [False]
    gov.share(private.id, "user:bob", "write", by="user:alice")
    assert gov.allowed("user:bob", Action.write, [private]) == [True]
    assert gov.unshare(private.id, "user:bob")
    assert gov.allowed("user:bob", Action.read, [private]) == [False]
    gov.grant_role("v", "agent:ops", Role.admin, by="system")
    assert gov.allowed("agent:ops", Action.purge, cubes) == [True, True, True]
    assert gov.allowed("agent:ops", Action.read, [cube("alice", vault="other")]) == [False]
    assert gov.revoke_role("v", "user:bob") and gov.role("v", "user:bob") is None
    with pytest.raises(PermissionDenied, match="user:bob may not read"):
        gov.check("user:bob", Action.read, [private])
    gov.check("system", Action.purge, cubes)
    with pytest.raises(PermissionDenied):
        gov.check_vault("user:bob", "v", Action.write, "alice")
    gov.check_vault("user:alice", "v", Action.write, "alice")


def test_created_by_is_no_ownership(gov: MemGovernance) -> None:
    """Only the scope's user owns a cube; `created_by` comes from files and grants nothing."""
    claimed = MemCube(
        content="alice's note",
        scope=Scope(vault="v", user_id="alice"),
        provenance=Provenance(created_by="user:mallory"),
        governance={"visibility": "shared"},
    ).seal()
    for action in Action:
        assert gov.allowed("user:mallory", action, [claimed]) == [False]
        assert gov.allowed("user:alice", action, [claimed]) == [True]
    gov.grant_role("v", "user:mallory", Role.writer, by="user:alice")  # what a role gives
    assert [gov.allowed("user:mallory", a, [claimed])[0] for a in Action] == [
        True,
        True,
        True,
        False,
        False,
    ]
    with pytest.raises(PermissionDenied, match="may not purge"):
        gov.check("user:mallory", Action.purge, [claimed])


@pytest.mark.parametrize("bad", ["alice", "", "root:x", None])
def test_principals_are_validated(gov: MemGovernance, bad) -> None:
    with pytest.raises(InvalidInput):
        gov.grant_role("v", bad, Role.reader, by="system")
    with pytest.raises(InvalidInput):
        gov.grant_role("v", "user:x", "superuser", by="system")


def test_audit_chain_detects_tampering(gov: MemGovernance) -> None:
    for i in range(5):
        gov.audit("user:alice", "add", cube_ids=[f"c{i}"], vault="v")
    gov.audit("user:bob", "get", cube_ids=["c1"], outcome="denied")
    assert gov.verify_audit() == (True, None)
    log = gov.audit_log(cube_id="c1")
    assert [(e.principal, e.op, e.outcome) for e in log] == [
        ("user:alice", "add", "ok"),
        ("user:bob", "get", "denied"),
    ]
    entries = gov.audit_log()
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    with gov.engine.begin() as conn:
        conn.execute(update(audit_t).where(audit_t.c.seq == entries[2].seq).values(outcome="ok!"))
    assert gov.verify_audit() == (False, entries[2].seq)


def test_redaction_masks_pii_and_records_kinds_only() -> None:
    text = (
        "Mail me at jo.doe@example.com or call +1 415-555-2671. IBAN DE89 3704 0044 0532 "
        "0130 00, card 4111 1111 1111 1111, order 1234 5678 9012 3456, ticket ZX-99812."
    )
    policy = RedactionPolicy(name="pii", patterns={"ticket": r"ZX-\d+"})
    out, found = redact(text, policy)
    assert "jo.doe" not in out and "415-555" not in out and "DE89" not in out
    assert "4111" not in out and "ZX-99812" not in out
    assert "1234 5678 9012 3456" in out  # fails the Luhn check: not a card
    assert {(r.kind, r.count) for r in found} == {
        ("email", 1),
        ("phone", 1),
        ("iban", 1),
        ("card", 1),
        ("ticket", 1),
    }
    assert all(r.policy == "pii" for r in found)
    assert "example.com" not in str([r.model_dump() for r in found])
    off = RedactionPolicy(emails=False, phones=False, ibans=False, cards=False)
    assert redact(text, off) == (text, [])
    with pytest.raises(ValueError, match="not a valid regex"):
        RedactionPolicy(patterns={"x": "("})
