"""MemGovernance: principals, roles, grants, a hash-chained audit log.

Principals are strings: `user:<id>`, `agent:<id>`, or `system`. A user owns the cubes of
their own scope. Roles are per vault (owner > admin > writer > reader): readers and writers
reach the vault's shared cubes, admins and owners all of them. Grants share single cubes
(read or write) and can be revoked; public cubes are readable by anyone. `check` is the one
enforcement point every facade call goes through; the audit log records each call, every
entry hashing the one before it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import OperationalError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random

from .catalog import Catalog
from .cube import MemCube, Visibility, check_name
from .errors import InvalidInput, MemOSError

SYSTEM = "system"
GENESIS = "0" * 64


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

audit_t = Table(
    "memos_audit",
    gov_metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("principal", String(300), nullable=False),
    Column("op", String(64), nullable=False),
    Column("vault", String(256)),
    Column("cube_ids", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
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


class AuditEntry(BaseModel):
    seq: int
    at: datetime
    principal: str
    op: str
    vault: str | None
    cube_ids: list[str] = Field(default_factory=list)
    outcome: str
    detail: str = ""
    prev_hash: str
    hash: str


def _entry_hash(
    prev: str,
    at: float,
    principal: str,
    op: str,
    vault: str | None,
    cube_ids: str,
    outcome: str,
    detail: str,
) -> str:
    body = json.dumps(
        [prev, repr(at), principal, op, vault, cube_ids, outcome, detail], ensure_ascii=False
    )
    return hashlib.sha256(body.encode()).hexdigest()


class MemGovernance:
    """Roles, grants and the audit log, stored beside the catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.engine = catalog.engine
        self._lock = threading.Lock()
        gov_metadata.create_all(self.engine)

    # roles
    def grant_role(self, vault: str, principal: str, role: Role | str, by: str) -> None:
        check_name(vault, "vault")
        check_principal(principal)
        try:
            role = Role(role)
        except ValueError as exc:
            raise InvalidInput(f"role must be one of {[r.value for r in Role]}") from exc
        with self.engine.begin() as conn:
            conn.execute(
                delete(roles_t).where(roles_t.c.vault == vault, roles_t.c.principal == principal)
            )
            conn.execute(
                insert(roles_t).values(
                    vault=vault,
                    principal=principal,
                    role=role.value,
                    granted_by=by,
                    granted_at=_now(),
                )
            )

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
        with self.engine.begin() as conn:
            done = conn.execute(
                update(grants_t)
                .where(grants_t.c.cube_id == cube_id, grants_t.c.principal == principal)
                .values(access=access.value, granted_by=by, granted_at=_now())
            )
            if done.rowcount == 0:
                conn.execute(
                    insert(grants_t).values(
                        cube_id=cube_id,
                        principal=principal,
                        access=access.value,
                        granted_by=by,
                        granted_at=_now(),
                    )
                )

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
            if owner_of(c) == principal or c.provenance.created_by == principal:
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
    @retry(
        retry=retry_if_exception_type(OperationalError),
        stop=stop_after_attempt(8),
        wait=wait_random(0.01, 0.2),
        reraise=True,
    )
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
        """Append one entry, chained to the last (writers are serialised, so the chain never
        forks; SQLite's snapshot conflicts between processes are retried)."""
        ids = json.dumps(list(cube_ids))
        at = _now()
        with self._lock, self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.exec_driver_sql("LOCK TABLE memos_audit IN SHARE ROW EXCLUSIVE MODE")
            prev = (
                conn.execute(
                    select(audit_t.c.hash).order_by(audit_t.c.seq.desc()).limit(1)
                ).scalar()
                or GENESIS
            )
            conn.execute(
                insert(audit_t).values(
                    at=at,
                    principal=principal,
                    op=op,
                    vault=vault,
                    cube_ids=ids,
                    outcome=outcome,
                    detail=detail,
                    prev_hash=prev,
                    hash=_entry_hash(prev, at, principal, op, vault, ids, outcome, detail),
                )
            )

    def audit_log(self, cube_id: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        q = select(audit_t).order_by(audit_t.c.seq)
        if cube_id is not None:
            q = q.where(audit_t.c.cube_ids.contains(json.dumps(cube_id)))
        with self.engine.connect() as conn:
            rows = conn.execute(q.limit(limit)).all()
        return [
            AuditEntry(
                seq=r.seq,
                at=datetime.fromtimestamp(r.at, UTC),
                principal=r.principal,
                op=r.op,
                vault=r.vault,
                cube_ids=json.loads(r.cube_ids),
                outcome=r.outcome,
                detail=r.detail,
                prev_hash=r.prev_hash,
                hash=r.hash,
            )
            for r in rows
        ]

    def verify_audit(self) -> tuple[bool, int | None]:
        """Walk the chain; returns (intact, seq of the first entry that does not verify)."""
        prev = GENESIS
        with self.engine.connect() as conn:
            for r in conn.execute(select(audit_t).order_by(audit_t.c.seq)):
                expect = _entry_hash(
                    prev, r.at, r.principal, r.op, r.vault, r.cube_ids, r.outcome, r.detail
                )
                if r.prev_hash != prev or r.hash != expect:
                    return False, r.seq
                prev = r.hash
        return True, None


def _now() -> float:
    return datetime.now(UTC).timestamp()
