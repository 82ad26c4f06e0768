"""The catalog: cubes and every version of them, in SQLite or PostgreSQL through SQLAlchemy 2.

The catalog is the source of truth. Each cube row carries an `index_state`:
`pending` until the vector index and graph agree with the row, then `committed`.

Sealed rows: with a key (the data dir's audit key, `audit.load_key`), every cube and version
row carries `seal`, an HMAC over its id, version and stored JSON. A row whose seal is missing
or wrong (content edited in the database, its fingerprint recomputed) is read as forged
(`MemCube.intact` is False) and never served. A catalog from before sealing is sealed once, in
the open that adds the column (it trusts the rows as they are then).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic_core import PydanticSerializationError
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.sql import Select

from .cube import Form, MemCube, State, VersionRecord
from .errors import Conflict, InvalidInput, MemOSError, NotFound, StoreError
from .settings import SettingsStore
from .tables import add_missing_indexes, create_tables, upsert

PENDING = "pending"
COMMITTED = "committed"
SCHEMA_VERSION = "1"

MAX_ACTOR_LEN = 320  # who changed a cube: "user:" / "agent:" + a name of up to MAX_ID_LEN

metadata = MetaData()

cubes_t = Table(
    "memos_cubes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("vault", String(256), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("agent_id", String(256)),
    Column("session_id", String(256)),
    Column("form", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("index_state", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("valid_from", Float),
    Column("importance", Float, nullable=False),
    Column("access_count", Integer, nullable=False, default=0),
    Column("last_accessed_at", Float),
    Column("data", Text, nullable=False),
    Column("seal", String(64)),
    Column("seq", BigInteger),  # the scope's change mark at this row's last write
    Index("ix_memos_cubes_scope", "vault", "user_id", "state"),
    Index("ix_memos_cubes_index_state", "index_state"),
    Index("ix_memos_cubes_seq", "vault", "user_id", "seq"),
    # a scope's cubes of one form (KV caches, adapters) without a scan of its plaintext
    Index("ix_memos_cubes_form", "vault", "user_id", "form", "state"),
)

versions_t = Table(
    "memos_cube_versions",
    metadata,
    Column("cube_id", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("op", String(32), nullable=False),
    Column("changed_by", String(MAX_ACTOR_LEN), nullable=False),  # "agent:" + a 256 name
    Column("changed_at", Float, nullable=False),
    Column("data", Text, nullable=False),
    Column("seal", String(64)),
)

scope_seq_t = Table(
    "memos_scope_seq",
    metadata,
    Column("vault", String(256), primary_key=True),
    Column("user_id", String(256), primary_key=True),
    Column("seq", BigInteger, nullable=False),  # raised by every write to the scope's cubes
    Column("purged", BigInteger, nullable=False),  # raised by every purge of one of them
)
"""Each scope's change mark. A write raises its scope's `seq` in the transaction that writes
the cubes, and stamps them with it; the row lock orders writers of one scope, so a reader that
sees `seq` = n sees every cube written with a seq <= n (`scope_mark`, `scope_changes`)."""

meta_t = Table(
    "memos_meta",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
)


def ts(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    if not isinstance(dt, datetime):
        raise InvalidInput(f"a time must be a datetime, got {type(dt).__name__}")
    return dt.timestamp()


def _count(n: Any, what: str) -> int:
    """A row count or offset: a non-negative int (not a bool)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidInput(f"{what} must be a non-negative integer, got {n!r:.40}")
    return n


def from_ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def page_cursor(cube: MemCube) -> str:
    """The opaque keyset cursor of `cube` in `Catalog.list`'s order (created_at, id): pass it
    as `after` to get the rows that follow it."""
    key = json.dumps([ts(cube.lifecycle.created_at), cube.id])
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def read_cursor(cursor: Any) -> tuple[float, str]:
    """The (created_at, id) a `page_cursor` string stands for; InvalidInput if it is none."""
    if not isinstance(cursor, str) or not 0 < len(cursor) <= 1024:
        raise InvalidInput("cursor must be a cursor string from an earlier page")
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("cursor is not a cursor from an earlier page") from exc
    if (not isinstance(key, list) or len(key) != 2 or isinstance(key[0], bool)
            or not isinstance(key[0], int | float) or not isinstance(key[1], str)):
        raise InvalidInput("cursor is not a cursor from an earlier page")
    return float(key[0]), key[1]


@contextmanager
def _db_errors(what: str) -> Iterator[None]:
    """Turn what a database or its driver raises into MemOS errors: a broken uniqueness rule is
    a `Conflict` (another writer got there first), a value the database or driver cannot hold
    (NUL in PostgreSQL text, lone surrogates, integers out of range, over-long strings) is
    `InvalidInput`, anything else a `StoreError`. Errors MemOS raised on purpose pass."""
    try:
        yield
    except MemOSError:
        raise
    except DBIntegrityError as exc:
        raise Conflict(f"{what}: {exc.orig}") from exc
    except DataError as exc:
        raise InvalidInput(f"{what}: the database refused a value: {exc.orig}") from exc
    except (UnicodeError, OverflowError) as exc:
        raise InvalidInput(f"{what}: a value cannot be stored: {exc}") from exc
    except SQLAlchemyError as exc:
        raise StoreError(f"{what}: {exc}") from exc


MAX_CUBE_ID_LEN = 64  # the id columns' width: refused up front on every backend alike


def _check_cube_id(cube_id: Any) -> str:
    if not isinstance(cube_id, str) or not cube_id:
        raise InvalidInput(f"a cube id must be a non-empty string, got {cube_id!r:.40}")
    if len(cube_id) > MAX_CUBE_ID_LEN:
        raise InvalidInput(f"cube id {cube_id[:40]!r}... is longer than {MAX_CUBE_ID_LEN}")
    return cube_id


def _check_actor(changed_by: Any) -> str:
    if not isinstance(changed_by, str) or not changed_by or len(changed_by) > MAX_ACTOR_LEN:
        raise InvalidInput(
            f"changed_by must be a string of 1-{MAX_ACTOR_LEN} characters: {changed_by!r:.40}"
        )
    return changed_by


def _row_values(cube: MemCube, index_state: str) -> dict[str, Any]:
    _check_cube_id(cube.id)
    try:
        data = cube.model_dump_json()
    except PydanticSerializationError as exc:
        raise InvalidInput(f"cube {cube.id!r} cannot be stored: {exc}") from exc
    lc = cube.lifecycle
    return {
        "id": cube.id,
        "vault": cube.scope.vault,
        "user_id": cube.scope.user_id,
        "agent_id": cube.scope.agent_id,
        "session_id": cube.scope.session_id,
        "form": cube.form.value,
        "state": lc.state.value,
        "version": lc.version,
        "index_state": index_state,
        "created_at": ts(lc.created_at),
        "updated_at": ts(lc.updated_at),
        "expires_at": ts(lc.expires_at),
        "valid_from": ts(lc.valid_from),
        "importance": cube.organisation.importance,
        "access_count": lc.access_count,
        "last_accessed_at": ts(lc.last_accessed_at),
        "data": data,
    }


def _cube_from_row(row: Any) -> MemCube:
    cube = MemCube.model_validate_json(row.data)
    # Access bookkeeping and expiry change without a new version and live in columns.
    cube.lifecycle.access_count = row.access_count
    cube.lifecycle.last_accessed_at = from_ts(row.last_accessed_at)
    cube.lifecycle.expires_at = from_ts(row.expires_at)
    return cube


class Catalog:
    """Cubes, versions and settings in one relational database."""

    def __init__(self, url: str, key: bytes | None = None,
                 local_dir: Path | None = None) -> None:
        """`key`: seal rows with it (MemOS.open passes the data dir's audit key); without
        one, rows are neither sealed nor checked. `local_dir`: where this process may keep
        files derived from a server catalog (MemOS.open passes the data dir)."""
        self.url = url
        self.local_dir = local_dir
        self._seal_key = (
            None if key is None else hmac.new(key, b"memos-agents cube seal", "sha256").digest()
        )
        try:
            self.engine: Engine = create_engine(url, future=True, pool_pre_ping=True)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StoreError(f"cannot open catalog {url!r}: {exc}") from exc
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        create_tables(metadata, self.engine, f"catalog ({url})")
        self._add_seal_column()
        self._add_seq_column()
        add_missing_indexes(cubes_t, self.engine, f"catalog ({url})")  # after the columns
        self.meta_once("schema_version", SCHEMA_VERSION)
        self.catalog_id = self.meta_once("catalog_id", uuid.uuid4().hex)
        self.settings = SettingsStore(self.engine, legacy=self)  # typed settings, own table

    def _seal(self, cube_id: str, version: int, data: str) -> str | None:
        if self._seal_key is None:
            return None
        body = json.dumps([cube_id, version, data], ensure_ascii=False).encode()
        return hmac.new(self._seal_key, body, hashlib.sha256).hexdigest()

    def _authentic(self, cube_id: str, row: Any) -> bool:
        """The row's seal is the one this catalog's key makes (always, without a key)."""
        expect = self._seal(cube_id, row.version, row.data)
        return expect is None or hmac.compare_digest(row.seal or "", expect)

    def _cube(self, row: Any) -> MemCube:
        cube = _cube_from_row(row)
        return cube if self._authentic(row.id, row) else cube.mark_forged()

    def _version(self, row: Any) -> VersionRecord:
        rec = _version_of(row)
        if not self._authentic(row.cube_id, row):
            rec.cube.mark_forged()
        return rec

    def _values(self, cube: MemCube) -> dict[str, Any]:
        row = _row_values(cube, PENDING)
        row["seal"] = self._seal(row["id"], row["version"], row["data"])
        return row

    def _version_row(
        self, cube_id: str, version: int, op: str, changed_by: str, at: float | None, data: str
    ) -> dict[str, Any]:
        return {"cube_id": cube_id, "version": version, "op": op, "changed_by": changed_by,
                "changed_at": at, "data": data, "seal": self._seal(cube_id, version, data)}

    def _add_seal_column(self) -> None:
        """A catalog from before sealing gains the `seal` columns, and its rows are sealed
        now (with a key): the one time rows are trusted as found."""
        missing = [t for t in (cubes_t, versions_t)
                   if "seal" not in {c["name"] for c in inspect(self.engine).get_columns(t.name)}]
        if not missing:
            return
        try:
            with self.engine.begin() as conn:
                for t in missing:  # fixed DDL, no user text
                    conn.execute(text(f"ALTER TABLE {t.name} ADD COLUMN seal VARCHAR(64)"))
        except SQLAlchemyError as exc:  # another process opening this catalog added it first
            cols = {c["name"] for c in inspect(self.engine).get_columns(cubes_t.name)}
            if "seal" not in cols:
                raise StoreError(f"cannot add the seal column to {self.url!r}: {exc}") from exc
            return
        if self._seal_key is None:
            return
        with self._begin("seal existing rows") as conn:
            for r in conn.execute(select(cubes_t.c.id, cubes_t.c.version, cubes_t.c.data)).all():
                conn.execute(update(cubes_t).where(cubes_t.c.id == r.id)
                             .values(seal=self._seal(r.id, r.version, r.data)))
            cols = (versions_t.c.cube_id, versions_t.c.version, versions_t.c.data)
            for r in conn.execute(select(*cols)).all():
                conn.execute(
                    update(versions_t)
                    .where(versions_t.c.cube_id == r.cube_id, versions_t.c.version == r.version)
                    .values(seal=self._seal(r.cube_id, r.version, r.data))
                )

    def _add_seq_column(self) -> None:
        """A catalog from before change marks gains `memos_cubes.seq` (its index: with the
        others, `add_missing_indexes`; its rows keep seq NULL: a scope index loads them
        whole, then follows the marks)."""
        def has_seq() -> bool:
            return "seq" in {c["name"] for c in inspect(self.engine).get_columns(cubes_t.name)}

        if has_seq():
            return
        try:
            with self.engine.begin() as conn:  # fixed DDL, no user text
                conn.execute(text(f"ALTER TABLE {cubes_t.name} ADD COLUMN seq BIGINT"))
        except SQLAlchemyError as exc:  # another process opening this catalog added it first
            if not has_seq():
                raise StoreError(f"cannot add the seq column to {self.url!r}: {exc}") from exc

    def _bump(self, conn: Connection, scopes: Iterable[tuple[str, str]],
              purged: int = 0) -> dict[tuple[str, str], int]:
        """Raise the change mark of each scope (in a fixed order: no deadlock between two
        writers), in the caller's transaction; the new `seq` of each."""
        dialect_insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        out = {}
        for vault, user in sorted(set(scopes)):
            stmt = dialect_insert(scope_seq_t).values(vault=vault, user_id=user, seq=1,
                                                      purged=purged)
            stmt = stmt.on_conflict_do_update(
                index_elements=[scope_seq_t.c.vault, scope_seq_t.c.user_id],
                set_={"seq": scope_seq_t.c.seq + 1, "purged": scope_seq_t.c.purged + purged},
            ).returning(scope_seq_t.c.seq)
            out[(vault, user)] = int(conn.execute(stmt).scalar_one())
        return out

    def _stamp(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Raise the marks of these cube rows' scopes and stamp each row with its scope's."""
        marks = self._bump(conn, ((r["vault"], r["user_id"]) for r in rows))
        for r in rows:
            r["seq"] = marks[(r["vault"], r["user_id"])]

    @property
    def side_dir(self) -> Path | None:
        """Where files derived from the catalog may be kept: the folder of an SQLite catalog
        file (the data dir on the default; every process of it shares them); for a server
        database, a folder of `local_dir` named by the catalog's id (this machine's own: a
        database created anew has another id); None in memory or without a `local_dir`."""
        url = self.engine.url
        if url.get_backend_name() != "sqlite":
            return None if self.local_dir is None else (
                self.local_dir / "catalogs" / self.catalog_id)
        if url.database in (None, "", ":memory:"):
            return None
        return Path(url.database).resolve().parent

    def close(self) -> None:
        self.engine.dispose()

    def _begin(self, what: str = "catalog write") -> Any:
        """A transaction whose errors are MemOS errors (`_db_errors`)."""
        return _guarded(self.engine.begin(), what)

    def _connect(self, what: str = "catalog read") -> Any:
        return _guarded(self.engine.connect(), what)

    def _taken(self, ids: Sequence[str]) -> Conflict:
        """The error of an insert that lost a race: names the ids that exist now."""
        with self._connect() as conn:
            found = set(conn.execute(select(cubes_t.c.id).where(cubes_t.c.id.in_(ids))).scalars())
        taken = [i for i in ids if i in found] or list(ids)
        return Conflict(f"cube id already exists (another writer created it first): {taken}")

    # settings
    def get_meta(self, key: str) -> str | None:
        with self._connect() as c:
            return c.execute(select(meta_t.c.value).where(meta_t.c.key == key)).scalar()

    def set_meta(self, key: str, value: str) -> None:
        """Set `key` to `value` (one upsert: two processes setting it at once both succeed)."""
        with self._begin() as c:
            upsert(c, meta_t, {"key": key, "value": value}, keys=("key",))

    def meta_once(self, key: str, value: str) -> str:
        """The value of `key`, set to `value` if it has none (the first writer wins)."""
        got = self.get_meta(key)
        if got is None:
            # another process opening this catalog may write it first
            with suppress(Conflict), self._begin() as c:
                c.execute(insert(meta_t).values(key=key, value=value))
            got = self.get_meta(key)
        assert got is not None
        return got

    def delete_meta(self, key: str) -> None:
        with self._begin() as c:
            c.execute(delete(meta_t).where(meta_t.c.key == key))

    # writes
    def insert(self, cubes: Sequence[MemCube], changed_by: str) -> None:
        """Insert new cubes (pending) and their first version, all or nothing."""
        if not cubes:
            return
        _check_actor(changed_by)
        ids = [c.id for c in cubes]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise InvalidInput(f"cube ids given more than once in one insert: {dup}")
        now = datetime.now(UTC).timestamp()
        rows = [self._values(c) for c in cubes]
        versions = [
            self._version_row(c.id, c.lifecycle.version, "create", changed_by, now, r["data"])
            for c, r in zip(cubes, rows, strict=True)
        ]
        try:
            with self._begin("insert cubes") as conn:
                self._stamp(conn, rows)
                conn.execute(insert(cubes_t), rows)
                conn.execute(insert(versions_t), versions)
        except Conflict as exc:
            raise self._taken(ids) from exc

    def write_version(self, cube: MemCube, op: str, changed_by: str, expected_version: int) -> None:
        """Store `cube` as a new version (pending re-index); fails if someone else wrote first."""
        _check_actor(changed_by)
        values = self._values(cube)
        del values["id"], values["access_count"], values["last_accessed_at"]
        with self._begin() as conn:
            self._stamp(conn, [values])
            done = conn.execute(
                update(cubes_t)
                .where(cubes_t.c.id == cube.id, cubes_t.c.version == expected_version)
                .values(**values)
            )
            if done.rowcount != 1:
                raise Conflict(
                    f"cube {cube.id} changed concurrently (expected version {expected_version})"
                )
            conn.execute(
                insert(versions_t).values(
                    **self._version_row(cube.id, cube.lifecycle.version, op, changed_by,
                                        ts(cube.lifecycle.updated_at), values["data"])
                )
            )

    def insert_history(self, cube: MemCube, versions: Sequence[VersionRecord]) -> None:
        """Insert a cube (pending) with its full version history, as imported."""
        numbers = [v.version for v in versions]
        if len(set(numbers)) != len(numbers):
            raise InvalidInput(f"cube {cube.id!r}: version numbers given more than once")
        row = self._values(cube)
        history = [
            self._version_row(cube.id, v.version, v.op, _check_actor(v.changed_by),
                              ts(v.changed_at), _row_values(v.cube, PENDING)["data"])
            for v in versions
        ]
        try:
            with self._begin("insert cube history") as conn:
                self._stamp(conn, [row])
                conn.execute(insert(cubes_t).values(**row))
                if history:
                    conn.execute(insert(versions_t), history)
        except Conflict as exc:
            raise self._taken([cube.id]) from exc

    def mark_committed(self, ids: Iterable[str], versions: dict[str, int]) -> None:
        """Mark rows whose index now matches `versions[id]` as committed (one UPDATE per
        distinct version, not per row)."""
        by_version: dict[int, list[str]] = {}
        for cid in ids:
            by_version.setdefault(versions[cid], []).append(cid)
        with self._begin() as conn:
            for version, group in by_version.items():
                for start in range(0, len(group), 500):
                    conn.execute(
                        update(cubes_t)
                        .where(
                            cubes_t.c.id.in_(group[start : start + 500]),
                            cubes_t.c.version == version,
                        )
                        .values(index_state=COMMITTED)
                    )

    def touch(self, ids: Sequence[str], at: datetime) -> None:
        if not ids:
            return
        with self._begin() as conn:
            conn.execute(
                update(cubes_t)
                .where(cubes_t.c.id.in_(list(ids)))
                .values(access_count=cubes_t.c.access_count + 1, last_accessed_at=ts(at))
            )

    def set_expiry(self, expiries: dict[str, datetime | None]) -> None:
        """Move cubes' expiry (a TTL refresh) without writing a new version."""
        with self._begin() as conn:
            scopes = self._scopes_of(conn, list(expiries))
            marks = self._bump(conn, scopes.values())
            for cid, when in expiries.items():
                mark = marks.get(scopes.get(cid, ("", "")))
                conn.execute(update(cubes_t).where(cubes_t.c.id == cid)
                             .values(expires_at=ts(when), seq=mark))

    def purge(self, cube_id: str) -> int:
        """Delete a cube and its versions; returns how many version rows went."""
        with self._begin() as conn:
            self._bump(conn, self._scopes_of(conn, [cube_id]).values(), purged=1)
            gone = conn.execute(delete(versions_t).where(versions_t.c.cube_id == cube_id))
            conn.execute(delete(cubes_t).where(cubes_t.c.id == cube_id))
        return int(gone.rowcount or 0)

    def _scopes_of(self, conn: Connection, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """(vault, user) of each of these cubes that exists."""
        q = select(cubes_t.c.id, cubes_t.c.vault, cubes_t.c.user_id)
        out = {}
        for start in range(0, len(ids), 500):
            for r in conn.execute(q.where(cubes_t.c.id.in_(ids[start : start + 500]))):
                out[r.id] = (r.vault, r.user_id)
        return out

    # reads
    def get(self, cube_id: str) -> MemCube:
        found = self.get_many([cube_id])
        if cube_id not in found:
            raise NotFound(f"no cube with id {cube_id!r}")
        return found[cube_id]

    def get_many(self, ids: Sequence[str]) -> dict[str, MemCube]:
        if not ids:
            return {}
        with self._connect() as conn:
            rows = conn.execute(select(cubes_t).where(cubes_t.c.id.in_(list(ids)))).all()
        return {r.id: self._cube(r) for r in rows}

    def past_expiry(self, now: datetime, limit: int = 10_000) -> list[MemCube]:
        """Active cubes whose TTL has run out."""
        with self._connect() as conn:
            rows = conn.execute(
                select(cubes_t)
                .where(cubes_t.c.state == State.active.value, cubes_t.c.expires_at <= ts(now))
                .limit(limit)
            ).all()
        return [self._cube(r) for r in rows]

    def vaults(self) -> list[str]:
        with self._connect() as conn:
            return list(conn.execute(select(cubes_t.c.vault).distinct()).scalars())

    # retrieval's reads: one (vault, user) scope
    def scope_signature(self, vault: str, user_id: str) -> tuple[int, float]:
        """(row count, latest update time) of one scope: changes whenever any process writes
        to it."""
        q = select(func.count(), func.max(cubes_t.c.updated_at)).where(
            cubes_t.c.vault == vault, cubes_t.c.user_id == user_id
        )
        with self._connect() as conn:
            n, t = conn.execute(q).one()
        return int(n), float(t or 0.0)

    def scope_mark(self, vault: str, user_id: str) -> tuple[int, int]:
        """(seq, purged): the change mark of one scope (one primary-key read); (0, 0) for a
        scope never written since marks began."""
        q = select(scope_seq_t.c.seq, scope_seq_t.c.purged).where(
            scope_seq_t.c.vault == vault, scope_seq_t.c.user_id == user_id
        )
        with self._connect() as conn:
            row = conn.execute(q).first()
        return (0, 0) if row is None else (int(row.seq), int(row.purged))

    def scope_changes(self, vault: str, user_id: str, since: int, form: str = "plaintext",
                      held: Callable[[str, int, str, float | None], bool] | None = None
                      ) -> list[MemCube]:
        """The cubes of one scope and form written after mark `since` (any state), in the
        order they were written; those `held(id, version, state, expires_at)` says the caller
        already has as they are are not parsed (nor returned)."""
        q = (select(cubes_t)
             .where(cubes_t.c.vault == vault, cubes_t.c.user_id == user_id,
                    cubes_t.c.seq > since, cubes_t.c.form == form)
             .order_by(cubes_t.c.seq, cubes_t.c.id))
        with self._connect() as conn:
            return [self._cube(r) for r in conn.execute(q)
                    if held is None or not held(r.id, r.version, r.state, r.expires_at)]

    def scope_ids(self, vault: str, user_id: str) -> set[str]:
        """The ids of every cube of one scope."""
        q = select(cubes_t.c.id).where(cubes_t.c.vault == vault, cubes_t.c.user_id == user_id)
        with self._connect() as conn:
            return set(conn.execute(q).scalars())

    def scope_cubes(
        self, vault: str, user_id: str, states: Iterable[str], form: str = "plaintext"
    ) -> list[MemCube]:
        """Every cube of one scope in one of `states` (values) and of one form, unordered."""
        q = select(cubes_t).where(
            cubes_t.c.vault == vault,
            cubes_t.c.user_id == user_id,
            cubes_t.c.form == form,
            cubes_t.c.state.in_(list(states)),
        )
        with self._connect() as conn:
            return [self._cube(r) for r in conn.execute(q)]

    def pending(self, limit: int = 1000) -> list[MemCube]:
        with self._connect() as conn:
            rows = conn.execute(
                select(cubes_t).where(cubes_t.c.index_state == PENDING).limit(limit)
            ).all()
        return [self._cube(r) for r in rows]

    def list(
        self,
        *,
        vault: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        states: Sequence[State] | None = None,
        limit: int = 100,
        offset: int = 0,
        after: str | None = None,
    ) -> list[MemCube]:
        """Cubes in (created_at, id) order; `after`: only those past that `page_cursor`."""
        q = select(cubes_t)
        if after is not None:
            at, cid = read_cursor(after)
            q = q.where(or_(cubes_t.c.created_at > at,
                            and_(cubes_t.c.created_at == at, cubes_t.c.id > cid)))
        if vault is not None:
            q = q.where(cubes_t.c.vault == vault)
        if user_id is not None:
            q = q.where(cubes_t.c.user_id == user_id)
        if session_id is not None:
            q = q.where(cubes_t.c.session_id == session_id)
        if states:
            q = q.where(cubes_t.c.state.in_([s.value for s in states]))
        q = q.order_by(cubes_t.c.created_at, cubes_t.c.id)
        q = q.limit(_count(limit, "limit")).offset(_count(offset, "offset"))
        with self._connect() as conn:
            return [self._cube(r) for r in conn.execute(q).all()]

    def histories(self, vault: str, user_id: str) -> dict[str, list[VersionRecord]]:
        """Every version of every cube in one scope, grouped by cube, oldest first."""
        q = (
            select(versions_t)
            .join(cubes_t, cubes_t.c.id == versions_t.c.cube_id)
            .where(cubes_t.c.vault == vault, cubes_t.c.user_id == user_id)
            .order_by(versions_t.c.cube_id, versions_t.c.version)
        )
        out: dict[str, list[VersionRecord]] = {}
        with self._connect() as conn:
            for r in conn.execute(q):
                out.setdefault(r.cube_id, []).append(self._version(r))
        return out

    def history(self, cube_id: str) -> list[VersionRecord]:
        with self._connect() as conn:
            rows = conn.execute(
                select(versions_t)
                .where(versions_t.c.cube_id == cube_id)
                .order_by(versions_t.c.version)
            ).all()
        if not rows:
            raise NotFound(f"no cube with id {cube_id!r}")
        return [self._version(r) for r in rows]

    def stats(self) -> dict[str, Any]:
        with self._connect() as conn:
            by_state = dict(
                conn.execute(select(cubes_t.c.state, func.count()).group_by(cubes_t.c.state)).all()
            )
            by_form = dict(
                conn.execute(select(cubes_t.c.form, func.count()).group_by(cubes_t.c.form)).all()
            )
            users = conn.execute(select(func.count(func.distinct(cubes_t.c.user_id)))).scalar()
            vaults = conn.execute(select(func.count(func.distinct(cubes_t.c.vault)))).scalar()
            versions = conn.execute(select(func.count()).select_from(versions_t)).scalar()
            pending = conn.execute(
                select(func.count()).where(cubes_t.c.index_state == PENDING)
            ).scalar()
        return {
            "cubes": sum(by_state.values()),
            "by_state": by_state,
            "by_form": by_form,
            "users": users,
            "vaults": vaults,
            "versions": versions,
            "pending_index": pending,
        }

    def count_users(self, vault: str, at: datetime | None = None) -> dict[str, int]:
        """Active cubes per user_id in `vault`; with `at`, only those not expired by then."""
        q = (
            select(cubes_t.c.user_id, func.count())
            .where(cubes_t.c.vault == vault, cubes_t.c.state == State.active.value)
            .group_by(cubes_t.c.user_id)
        )
        if at is not None:
            q = q.where(cubes_t.c.expires_at.is_(None) | (cubes_t.c.expires_at > ts(at)))
        with self._connect() as conn:
            return dict(conn.execute(q).all())

    def live(
        self, vault: str, user_ids: Sequence[str], at: datetime, limit: int | None = None
    ) -> list[MemCube]:
        """Active cubes of these users in `vault` not expired at `at`, latest update first."""
        q = (
            select(cubes_t)
            .where(
                cubes_t.c.vault == vault,
                cubes_t.c.state == State.active.value,
                cubes_t.c.expires_at.is_(None) | (cubes_t.c.expires_at > ts(at)),
            )
            .order_by(cubes_t.c.updated_at.desc(), cubes_t.c.id)
            .limit(limit)
        )
        rows: list[Any] = []
        with self._connect() as conn:
            for start in range(0, len(user_ids), 500):  # stay under bound-parameter limits
                group = list(user_ids[start : start + 500])
                rows.extend(conn.execute(q.where(cubes_t.c.user_id.in_(group))).all())
        rows.sort(key=lambda r: (-r.updated_at, r.id))
        return [self._cube(r) for r in rows[:limit]]

    # the scheduler's and model memory's reads (active = state active; TTLs not applied)
    def _active(self, form: Form, vault: str | None, user_id: str | None) -> Select[Any]:
        q = select(cubes_t).where(
            cubes_t.c.form == form.value, cubes_t.c.state == State.active.value
        )
        if vault is not None:
            q = q.where(cubes_t.c.vault == vault)
        if user_id is not None:
            q = q.where(cubes_t.c.user_id == user_id)
        return q

    def _cubes(self, q: Select[Any]) -> list[MemCube]:
        with self._connect() as conn:
            return [self._cube(r) for r in conn.execute(q).all()]

    def active_cubes(
        self,
        *,
        form: Form = Form.plaintext,
        vault: str | None = None,
        user_id: str | None = None,
        limit: int | None = None,
    ) -> list[MemCube]:
        """Active cubes of one form (in one vault / of one user if given), oldest first."""
        q = self._active(form, vault, user_id)
        return self._cubes(q.order_by(cubes_t.c.created_at, cubes_t.c.id).limit(limit))

    def most_read(
        self,
        vault: str,
        user_id: str,
        *,
        min_access: int,
        since: datetime,
        limit: int,
        form: Form = Form.plaintext,
    ) -> list[MemCube]:
        """Active cubes read at least `min_access` times, last at or after `since`, most read
        first."""
        q = self._active(form, vault, user_id).where(
            cubes_t.c.access_count >= min_access, cubes_t.c.last_accessed_at >= ts(since)
        )
        return self._cubes(q.order_by(cubes_t.c.access_count.desc(), cubes_t.c.id).limit(limit))

    def cold_cubes(
        self,
        vault: str,
        user_id: str,
        *,
        before: datetime,
        max_importance: float,
        limit: int = 1000,
        form: Form = Form.plaintext,
    ) -> list[MemCube]:
        """Active cubes not read since `before` (never read: not changed since), below
        `max_importance`, least recently changed first."""
        cutoff = ts(before)
        q = self._active(form, vault, user_id).where(
            or_(
                cubes_t.c.last_accessed_at < cutoff,
                cubes_t.c.last_accessed_at.is_(None) & (cubes_t.c.updated_at < cutoff),
            ),
            cubes_t.c.importance < max_importance,
        )
        return self._cubes(q.order_by(cubes_t.c.updated_at, cubes_t.c.id).limit(limit))

    # the MIP loader's write: a whole file in one transaction
    def insert_histories(self, items: Sequence[tuple[MemCube, Sequence[VersionRecord]]]) -> None:
        """Insert cubes (pending) each with its full version history, all or nothing: one
        transaction for every cube of an imported file."""
        rows, history = [], []
        for cube, versions in items:
            rows.append(self._values(cube))
            history += [
                self._version_row(cube.id, v.version, v.op, v.changed_by, ts(v.changed_at),
                                  v.cube.model_dump_json())
                for v in versions
            ]
        if not rows:
            return
        try:
            with self._begin("insert imported cubes") as conn:
                self._stamp(conn, rows)
                conn.execute(insert(cubes_t), rows)
                if history:
                    conn.execute(insert(versions_t), history)
        except Conflict as exc:
            raise self._taken([r["id"] for r in rows]) from exc


@contextmanager
def _guarded(inner: Any, what: str) -> Iterator[Any]:
    """An engine's `begin()` / `connect()` whose errors, the body's and the commit's, leave as
    MemOS errors."""
    with _db_errors(what), inner as conn:
        yield conn


def _version_of(row: Any) -> VersionRecord:
    return VersionRecord(
        cube_id=row.cube_id,
        version=row.version,
        op=row.op,
        changed_by=row.changed_by,
        changed_at=from_ts(row.changed_at),
        cube=MemCube.model_validate_json(row.data),
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
