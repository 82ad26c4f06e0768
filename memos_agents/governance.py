"""MemGovernance: principals, roles, grants, and the keyed audit chain (`audit`).

Principals are strings: `user:<id>`, `agent:<id>`, or `system`. A user owns the cubes of
their own scope, and ownership is nothing else: a cube's `provenance.created_by` (which an
imported file can set to anything) grants no access; an agent that writes into a user's
memory reaches those cubes through its role or grants like any other principal. Roles are per
vault (owner > admin > writer > reader): readers and writers reach the vault's shared cubes,
admins and owners all of them. Grants share single cubes (read or write) and can be revoked;
public cubes are readable by anyone. `check` is the one enforcement point every facade call
goes through; the audit log (`audit.AuditLog`: HMAC-chained, anchored, serialised across
processes) records each call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    MetaData,
    String,
    Table,
    and_,
    delete,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .audit import (
    GENESIS,
    AuditEntry,
    AuditKeyMismatch,
    AuditLog,
    AuditVerdict,
    audit_t,
    head_t,
    load_key,
)
from .catalog import Catalog
from .cube import MemCube, Visibility, check_name
from .errors import InvalidInput, MemOSError
from .tables import create_tables, upsert

__all__ = [
    "GENESIS",
    "SYSTEM",
    "Access",
    "Action",
    "AuditEntry",
    "AuditKeyMismatch",
    "AuditVerdict",
    "MemGovernance",
    "PermissionDenied",
    "Role",
    "audit_t",
    "check_principal",
    "head_t",
    "owner_of",
]

SYSTEM = "system"


class PermissionDenied(MemOSError, PermissionError):
    """The principal may not do this; nothing was changed."""


class Role(StrEnum):
    reader = "reader"
    writer = "writer"
    admin = "admin"
    owner = "owner"


class Access(StrEnum):
    read = "read"
    write = "write"


class Action(StrEnum):
    read = "read"
    write = "write"
    delete = "delete"
    purge = "purge"
    admin = "admin"


_RANK = {Role.reader: 1, Role.writer: 2, Role.admin: 3, Role.owner: 4}
_NEEDS = {Action.read: 1, Action.write: 2, Action.delete: 2, Action.purge: 3, Action.admin: 3}

gov_metadata = MetaData()

roles_t = Table(
    "memos_roles",
    gov_metadata,
    Column("vault", String(256), primary_key=True),
    Column("principal", String(300), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("granted_by", String(300), nullable=False),
    Column("granted_at", Float, nullable=False),
)

grants_t = Table(
    "memos_grants",
    gov_metadata,
    Column("cube_id", String(64), primary_key=True),
    Column("principal", String(300), primary_key=True),
    Column("access", String(8), nullable=False),
    Column("granted_by", String(300), nullable=False),
    Column("granted_at", Float, nullable=False),
)


def check_principal(principal: Any) -> str:
    check_name(principal, "principal")
    if principal != SYSTEM and not re.match(r"^(user|agent):.+", principal):
        raise InvalidInput(
            f"principal must be 'user:<id>', 'agent:<id>' or 'system', not {principal!r}"
        )
    return principal


def owner_of(cube: MemCube) -> str:
    return f"user:{cube.scope.user_id}"


class MemGovernance:
    """Roles, grants and the audit log, stored beside the catalog."""

    def __init__(
        self, catalog: Catalog, data_dir: Path | None = None, key: bytes | None = None
    ) -> None:
        """`key` keys the audit chain; without it `audit.load_key` finds it (`MEMOS_AUDIT_KEY`,
        else `<data_dir>/audit.key`; a SQLite catalog's dir stands in for a missing data_dir)."""
        self.engine = catalog.engine
        create_tables(gov_metadata, self.engine, "governance")
        if key is None:
            key = load_key(data_dir if data_dir is not None else _sqlite_dir(catalog.url))
        self.audit_chain = AuditLog(self.engine, key)

    # roles
    def grant_role(self, vault: str, principal: str, role: Role | str, by: str) -> None:
        check_name(vault, "vault")
        check_principal(principal)
        try:
            role = Role(role)
        except ValueError as exc:
            raise InvalidInput(f"role must be one of {[r.value for r in Role]}") from exc
        row = {"vault": vault, "principal": principal, "role": role.value, "granted_by": by,
               "granted_at": _now()}
        with self.engine.begin() as conn:  # one statement: two grants at once both succeed
            upsert(conn, roles_t, row, keys=("vault", "principal"))

    def revoke_role(self, vault: str, principal: str) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(
                delete(roles_t).where(roles_t.c.vault == vault, roles_t.c.principal == principal)
            )
        return done.rowcount > 0

    def role(self, vault: str, principal: str) -> Role | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(roles_t.c.role).where(
                    roles_t.c.vault == vault, roles_t.c.principal == principal
                )
            ).scalar()
        return None if value is None else Role(value)

    def roles(self, vault: str) -> dict[str, Role]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(roles_t.c.principal, roles_t.c.role).where(roles_t.c.vault == vault)
            ).all()
        return {p: Role(r) for p, r in rows}

    # grants on single cubes
    def share(self, cube_id: str, principal: str, access: Access | str, by: str) -> None:
        check_principal(principal)
        try:
            access = Access(access)
        except ValueError as exc:
            raise InvalidInput("access must be 'read' or 'write'") from exc
        row = {"cube_id": cube_id, "principal": principal, "access": access.value,
               "granted_by": by, "granted_at": _now()}
        with self.engine.begin() as conn:
            upsert(conn, grants_t, row, keys=("cube_id", "principal"))

    def unshare(self, cube_id: str, principal: str) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(
                delete(grants_t).where(
                    grants_t.c.cube_id == cube_id, grants_t.c.principal == principal
                )
            )
        return done.rowcount > 0

    def revoke_cube(self, cube_id: str) -> None:
        """Drop every grant on a cube (it was purged)."""
        with self.engine.begin() as conn:
            conn.execute(delete(grants_t).where(grants_t.c.cube_id == cube_id))

    def grants(self, cube_ids: Sequence[str], principal: str) -> dict[str, Access]:
        if not cube_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(grants_t.c.cube_id, grants_t.c.access).where(
                    and_(grants_t.c.cube_id.in_(list(cube_ids)), grants_t.c.principal == principal)
                )
            ).all()
        return {c: Access(a) for c, a in rows}

    # decisions
    def allowed(self, principal: str, action: Action, cubes: Sequence[MemCube]) -> list[bool]:
        """For each cube, whether `principal` may do `action` on it."""
        if principal == SYSTEM:
            return [True] * len(cubes)
        need = _NEEDS[action]
        roles: dict[str, int] = {}
        grants = self.grants([c.id for c in cubes], principal)
        out = []
        for c in cubes:
            if owner_of(c) == principal:  # the scope's user; a cube's created_by grants nothing
                out.append(True)
                continue
            vault = c.scope.vault
            if vault not in roles:
                r = self.role(vault, principal)
                roles[vault] = _RANK[r] if r else 0
            rank = roles[vault]
            if c.governance.visibility is Visibility.private and rank < _RANK[Role.admin]:
                rank = 0  # a private cube is its owner's, the vault's admins' and grantees'
            grant = grants.get(c.id)
            if grant is not None:
                rank = max(rank, 2 if grant is Access.write else 1)
            if action is Action.read and c.governance.visibility is Visibility.public:
                rank = max(rank, 1)
            out.append(rank >= need)
        return out

    def check(self, principal: str, action: Action, cubes: Sequence[MemCube]) -> None:
        denied = [
            c.id
            for c, ok in zip(cubes, self.allowed(principal, action, cubes), strict=True)
            if not ok
        ]
        if denied:
            raise PermissionDenied(
                f"{principal} may not {action.value} cube(s) {', '.join(denied[:5])}"
            )

    def check_vault(self, principal: str, vault: str, action: Action, user_id: str) -> None:
        """Writing into (or reading all of) a user's scope in a vault."""
        if principal in (SYSTEM, f"user:{user_id}"):
            return
        r = self.role(vault, principal)
        if (_RANK[r] if r else 0) < _NEEDS[action]:
            raise PermissionDenied(
                f"{principal} may not {action.value} in {user_id!r}'s memory of vault {vault!r}"
            )

    # audit
    def audit(
        self,
        principal: str,
        op: str,
        *,
        cube_ids: Sequence[str] = (),
        vault: str | None = None,
        outcome: str = "ok",
        detail: str = "",
    ) -> None:
        """Append one entry to the keyed chain (serialised across processes, see `audit`)."""
        self.audit_chain.append(
            principal, op, cube_ids=cube_ids, vault=vault, outcome=outcome, detail=detail
        )

    def audit_log(self, cube_id: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        return self.audit_chain.entries(cube_id=cube_id, limit=limit)

    def verify(self) -> AuditVerdict:
        """Check the chain against its anchor, with the reason of a failure in words."""
        return self.audit_chain.verify()

    def verify_audit(self) -> tuple[bool, int | None]:
        """(intact, seq of the first entry that does not verify, or the seq after the last
        entry when the fault is in the whole: entries missing at the end, a bad anchor)."""
        return self.audit_chain.verify().as_tuple()


def _sqlite_dir(url: str) -> Path | None:
    """The folder of a SQLite catalog file (None for any other catalog)."""
    try:
        u = make_url(url)
    except ArgumentError:
        return None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database).resolve().parent


def _now() -> float:
    return datetime.now(UTC).timestamp()
