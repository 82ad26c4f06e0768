"""API keys of the server, one row each in `memos_api_keys` (in the catalog's database).

A key names one principal (`user:<id>`, `agent:<id>`) and, optionally, the vaults it may
reach. The secret is shown once, at creation; only its SHA-256 is stored (a key is 32 random
bytes, so a slow hash buys nothing). Revoked keys stay listed, with when they were revoked.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Column, Float, MetaData, String, Table, Text, insert, select, update
from sqlalchemy.engine import Engine

from .errors import InvalidInput, NotFound
from .tables import create_tables

PREFIX = "mk_"

keys_t = Table(
    "memos_api_keys",
    MetaData(),
    Column("id", String(32), primary_key=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("principal", String(256), nullable=False, index=True),
    Column("vaults", Text, nullable=False, default="null"),
    Column("label", String(256), nullable=False, default=""),
    Column("created_by", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)


class ApiKey(BaseModel):
    """What a key says about its bearer (never the secret)."""

    id: str
    principal: str
    vaults: list[str] | None = None  # None: every vault the principal's grants reach
    label: str = ""
    created_by: str
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id, principal=row.principal, vaults=json.loads(row.vaults), label=row.label,
        created_by=row.created_by, created_at=row.created_at, revoked_at=row.revoked_at,
    )


class KeyStore:
    """Create, list, revoke and resolve API keys."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(keys_t.metadata, engine, "API key")

    def create(
        self, principal: str, *, vaults: list[str] | None = None, label: str = "",
        by: str = "system",
    ) -> tuple[ApiKey, str]:
        """A new key for `principal`: (its record, the secret to hand out once)."""
        if vaults is not None and (not vaults or not all(isinstance(v, str) and v for v in vaults)):
            raise InvalidInput("vaults must be a non-empty list of vault names (or None)")
        key_id = secrets.token_hex(8)
        secret = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        rec = ApiKey(id=key_id, principal=principal, vaults=vaults, label=label,
                     created_by=by, created_at=time.time())
        with self.engine.begin() as conn:
            conn.execute(insert(keys_t).values(
                id=rec.id, digest=_digest(secret), principal=rec.principal,
                vaults=json.dumps(rec.vaults), label=rec.label, created_by=rec.created_by,
                created_at=rec.created_at,
            ))
        return rec, secret

    def list(self, *, include_revoked: bool = False) -> list[ApiKey]:
        q = select(keys_t).order_by(keys_t.c.created_at)
        if not include_revoked:
            q = q.where(keys_t.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [_key(r) for r in conn.execute(q)]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key by id; NotFound when there is none. Revoking twice keeps the first time."""
        with self.engine.begin() as conn:
            row = conn.execute(select(keys_t).where(keys_t.c.id == key_id)).first()
            if row is None:
                raise NotFound(f"no API key {key_id!r}")
            if row.revoked_at is None:
                conn.execute(update(keys_t).where(keys_t.c.id == key_id)
                             .values(revoked_at=time.time()))
            row = conn.execute(select(keys_t).where(keys_t.c.id == key_id)).one()
        return _key(row)

    def resolve(self, secret: str) -> ApiKey | None:
        """The active key whose secret this is, or None."""
        if not isinstance(secret, str) or not secret.startswith(PREFIX):
            return None
        digest = _digest(secret)
        with self.engine.connect() as conn:
            row = conn.execute(select(keys_t).where(keys_t.c.digest == digest)).first()
        if row is None or row.revoked_at is not None:
            return None
        return _key(row)

    def any_active(self) -> bool:
        q = select(keys_t.c.id).where(keys_t.c.revoked_at.is_(None)).limit(1)
        with self.engine.connect() as conn:
            return conn.execute(q).first() is not None
