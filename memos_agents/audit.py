"""The audit log: a keyed, anchored hash chain that several processes append to.

Every entry carries `HMAC-SHA256(key, seq, prev_hash, fields)` and the hash of the entry
before it. The key is never stored in the catalog:

- `MEMOS_AUDIT_KEY` (environment), if set: its UTF-8 bytes (at least 16 of them). Every
  process and data dir writing one catalog must use the same key, so a PostgreSQL catalog
  shared by several data dirs sets this variable.
- otherwise `<data_dir>/audit.key`: 32 random bytes, created on first open with mode 0600
  (atomically: two processes opening a new dir at once end up with the same key).

The anchor is one row of `memos_audit_head`, outside the chain rows: the number of entries,
the seq and hash of the newest one, the id of the key, and their HMAC. Each append takes the
anchor first (an UPDATE: SQLite's write lock, PostgreSQL's row lock), reads the head under
that lock, writes the entry and the new anchor in the same transaction. So appends from any
number of processes are serialised and the chain never forks; a process killed mid-append
leaves nothing of that append. `verify` walks the chain and checks it against the anchor:
an edited or recomputed entry, entries deleted anywhere (the newest ones and all of them
included), an appended forged entry, and an edited or deleted anchor are all reported.

Dirs from before keying (an unkeyed chain, no `memos_audit_head` table) are migrated on the
first open: the old chain is checked as it was (plain SHA-256), the anchor records where it
ends (`legacy_seq`) and, if it did not verify, its first bad entry (`legacy_bad`, reported by
every later `verify`), and the keyed chain continues from its last hash. This trusts that the
old entries were not rewritten before the migration (an unkeyed chain cannot show that), and
that a catalog without the anchor table was never keyed: someone able to drop that table and
every keyed entry could pass the rest off as an old dir. After the migration the old entries
are bound to the keyed chain, so later edits to them are detected.

A damaged anchor never stops the log: later appends chain on and keep the anchor marked
unverifiable, so the damage stays visible. An anchor keyed with another key does stop it
(`AuditKeyMismatch`): entries written with the wrong key could never be verified.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
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
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random

from .errors import ConfigError, InvalidInput, StoreError

log = logging.getLogger(__name__)

GENESIS = "0" * 64
KEY_ENV = "MEMOS_AUDIT_KEY"
KEY_FILE = "audit.key"
_HEAD_ID = 1
_UNVERIFIABLE = ""  # the MAC of an anchor that was found damaged: never equals a digest
_PG_INIT_LOCK = 0x6D656D6F73  # pg_advisory_xact_lock key of the one-time anchor set-up

audit_metadata = MetaData()

audit_t = Table(
    "memos_audit",
    audit_metadata,
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

head_t = Table(
    "memos_audit_head",
    audit_metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("entries", Integer, nullable=False),
    Column("head_seq", Integer, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("legacy_seq", Integer, nullable=False),  # entries up to here are unkeyed (old dirs)
    Column("legacy_bad", Integer),  # first old entry that did not verify at the migration
    Column("key_id", String(32), nullable=False),
    Column("mac", String(64), nullable=False),
)


class AuditKeyMismatch(ConfigError):
    """The catalog's audit chain was keyed with another key (set the same `MEMOS_AUDIT_KEY`
    for every process and data dir that writes this catalog)."""


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


class AuditVerdict(BaseModel):
    """What `verify` found: `first_bad_seq` is the first entry that does not verify, or for
    a fault of the whole (missing entries at the end, a bad anchor) the seq after the last
    entry found; `reason` says which in words."""

    intact: bool
    first_bad_seq: int | None = None
    reason: str = ""
    entries: int = 0

    def as_tuple(self) -> tuple[bool, int | None]:
        return self.intact, self.first_bad_seq


def load_key(data_dir: Path | None) -> bytes:
    """The audit key: `MEMOS_AUDIT_KEY`, else `<data_dir>/audit.key` (made on first use)."""
    env = os.environ.get(KEY_ENV)
    if env:
        key = env.encode("utf-8", "surrogatepass")
        if len(key) < 16:
            raise ConfigError(f"{KEY_ENV} must be at least 16 bytes long")
        return key
    if data_dir is None:
        raise ConfigError(
            f"the audit log needs a key: set {KEY_ENV} or give the data dir for {KEY_FILE}"
        )
    path = Path(data_dir) / KEY_FILE
    try:
        if not path.exists():
            _create_key_file(path)
        key = path.read_bytes()
        mode = path.stat().st_mode & 0o077
    except OSError as exc:
        raise ConfigError(f"cannot read or create the audit key {path}: {exc}") from exc
    if len(key) != 32:
        raise ConfigError(f"the audit key {path} is damaged: {len(key)} bytes, not 32")
    if mode:
        log.warning("the audit key %s is readable by others (chmod 600 it)", path)
    return key


def _create_key_file(path: Path) -> None:
    """Write a new key beside `path` and link it into place: the first process wins, every
    other one reads the winner's complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
        with suppress(FileExistsError):  # another process linked its key first
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _body(r: Any) -> list[Any]:
    return [repr(r.at), r.principal, r.op, r.vault, r.cube_ids, r.outcome, r.detail]


def legacy_hash(prev: str, r: Any) -> str:
    """The unkeyed entry hash of dirs from before keying."""
    return hashlib.sha256(json.dumps([prev, *_body(r)], ensure_ascii=False).encode()).hexdigest()


def _mac(key: bytes, parts: list[Any]) -> str:
    body = json.dumps(parts, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """Names a key without giving it away (kept in the anchor to tell keys apart)."""
    return _mac(key, ["memos-agents audit key id"])[:16]


def entry_mac(key: bytes, seq: int, prev: str, r: Any) -> str:
    """The keyed hash of one entry: its seq, the hash before it and its fields."""
    return _mac(key, ["entry", seq, prev, *_body(r)])


def anchor_mac(key: bytes, h: Any) -> str:
    """The keyed hash of the anchor's fields."""
    fields = [h.entries, h.head_seq, h.head_hash, h.legacy_seq, h.legacy_bad, h.key_id]
    return _mac(key, ["anchor", *fields])


class AuditLog:
    """The audit chain of one catalog (`engine`), keyed by `key` (see `load_key`)."""

    def __init__(self, engine: Engine, key: bytes) -> None:
        self.engine = engine
        self._key = key
        self.key_id = key_id(key)
        self._lock = threading.Lock()
        try:
            self._set_up()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot set up the audit log: {exc}") from exc

    def entry_mac(self, seq: int, prev: str, r: Any) -> str:
        return entry_mac(self._key, seq, prev, r)

    def anchor_mac(self, h: Any) -> str:
        return anchor_mac(self._key, h)

    # set-up and migration
    @contextmanager
    def _exclusive(self) -> Iterator[Connection]:
        """A transaction that holds the database's write lock (SQLite) or the set-up lock
        (PostgreSQL) from its first statement: one process at a time sets up the anchor."""
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif self.engine.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_INIT_LOCK})")
            yield conn
            conn.commit()

    @retry(
        retry=retry_if_exception_type((OperationalError, DBIntegrityError)),
        stop=stop_after_attempt(8),
        wait=wait_random(0.01, 0.2),
        reraise=True,
    )
    def _set_up(self) -> None:
        with self._exclusive() as conn:
            anchored = inspect(conn).has_table(head_t.name)
            audit_t.create(conn, checkfirst=True)
            if anchored:
                head = conn.execute(select(head_t)).first()
                if head is not None and head.key_id != self.key_id:
                    log.warning("the audit chain of this catalog was keyed with another key")
                return
            head_t.create(conn)
            self._migrate(conn)

    def _migrate(self, conn: Connection) -> None:
        """Anchor the chain that is there (none, or an unkeyed one from an older dir)."""
        prev, n, last, bad = GENESIS, 0, 0, None
        for r in conn.execute(select(audit_t).order_by(audit_t.c.seq)):
            if bad is None and (r.prev_hash != prev or r.hash != legacy_hash(prev, r)):
                bad = r.seq
            prev, n, last = r.hash, n + 1, r.seq
        if bad is not None:
            log.warning("the old audit chain does not verify from entry %d on", bad)
        head = dict(
            id=_HEAD_ID,
            entries=n,
            head_seq=last,
            head_hash=prev,
            legacy_seq=last,
            legacy_bad=bad,
            key_id=self.key_id,
        )
        conn.execute(insert(head_t).values(**head, mac=self.anchor_mac(_Row(head))))

    # append
    def append(
        self,
        principal: str,
        op: str,
        *,
        cube_ids: Sequence[str] = (),
        vault: str | None = None,
        outcome: str = "ok",
        detail: str = "",
    ) -> int:
        """Append one entry; returns its seq. Serialised across processes by the anchor."""
        row = _Row(
            dict(
                at=_now(),
                principal=principal,
                op=op,
                vault=vault,
                cube_ids=json.dumps(list(cube_ids)),
                outcome=outcome,
                detail=detail,
            )
        )
        try:
            try:
                return self._append(row)
            except (OperationalError, ProgrammingError):
                if not self._tables_gone():
                    raise
                # a table was dropped under us: set up again (an anchor table rebuilt over
                # keyed entries keeps them flagged, see the module docstring) and go on
                self._set_up()
                return self._append(row)
        except (DataError, UnicodeError) as exc:
            raise InvalidInput(f"an audit entry cannot be stored: {exc}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot append to the audit log: {exc}") from exc

    def _tables_gone(self) -> bool:
        names = set(inspect(self.engine).get_table_names())
        return not {audit_t.name, head_t.name} <= names

    @retry(
        retry=retry_if_exception_type((OperationalError, DBIntegrityError)),
        stop=stop_after_attempt(12),
        wait=wait_random(0.01, 0.2),
        reraise=True,
    )
    def _append(self, row: _Row) -> int:
        with self._lock, self.engine.begin() as conn:
            # a write first: SQLite's write lock, PostgreSQL's row lock, before the head is read
            # (entries beyond the anchor's head are foreign, forged: never reuse their seq)
            top = select(func.max(audit_t.c.seq)).scalar_subquery().label("top")
            head = conn.execute(
                update(head_t)
                .where(head_t.c.id == _HEAD_ID)
                .values(entries=head_t.c.entries)
                .returning(*head_t.c, top)
            ).first()
            if head is None:
                head = self._replace_anchor(conn)
            elif head.key_id != self.key_id:
                raise AuditKeyMismatch(
                    "the audit chain of this catalog was keyed with another key; set the "
                    f"same {KEY_ENV} for every process and data dir that writes it"
                )
            sound = hmac.compare_digest(head.mac, self.anchor_mac(head))
            if not sound:
                log.error("the audit anchor does not verify; it stays marked as damaged")
            seq = max(head.head_seq, head.top or 0) + 1
            digest = self.entry_mac(seq, head.head_hash, row)
            conn.execute(
                insert(audit_t).values(seq=seq, prev_hash=head.head_hash, hash=digest, **row.d)
            )
            new = _Row(
                dict(
                    entries=head.entries + 1,
                    head_seq=seq,
                    head_hash=digest,
                    legacy_seq=head.legacy_seq,
                    legacy_bad=head.legacy_bad,
                    key_id=self.key_id,
                )
            )
            mac = self.anchor_mac(new) if sound else _UNVERIFIABLE
            conn.execute(update(head_t).where(head_t.c.id == _HEAD_ID).values(**new.d, mac=mac))
        return seq

    def _replace_anchor(self, conn: Connection) -> Any:
        """The anchor row was deleted: put back one that chains on from the newest entry and
        is marked damaged, so the log keeps working and `verify` keeps saying so."""
        log.error("the audit anchor is missing; a damaged one replaces it")
        last = conn.execute(select(audit_t).order_by(audit_t.c.seq.desc()).limit(1)).first()
        n = conn.execute(select(func.count()).select_from(audit_t)).scalar() or 0
        head = dict(
            id=_HEAD_ID,
            entries=n,
            head_seq=last.seq if last else 0,
            head_hash=last.hash if last else GENESIS,
            legacy_seq=0,
            legacy_bad=None,
            key_id=self.key_id,
            mac=_UNVERIFIABLE,
        )
        conn.execute(insert(head_t).values(**head))
        return _Row({**head, "top": head["head_seq"]})

    # reading
    def entries(self, cube_id: str | None = None, limit: int = 1000) -> list[AuditEntry]:
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

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """One consistent view of the entries and the anchor while others append."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
                yield conn
            return
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN")
            yield conn

    def verify(self) -> AuditVerdict:
        """Walk the chain and check it against the anchor."""
        try:
            with self._snapshot() as conn:
                names = set(inspect(conn).get_table_names())
                head = None
                if head_t.name in names:
                    head = conn.execute(select(head_t).where(head_t.c.id == _HEAD_ID)).first()
                walk = _Walk(self, head)
                if audit_t.name in names:
                    for r in conn.execute(select(audit_t).order_by(audit_t.c.seq)):
                        if not walk.step(r):
                            break
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the audit log: {exc}") from exc
        return walk.verdict()


class _Row:
    """Attribute access to a dict: the values of a row not yet written."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.d = d

    def __getattr__(self, name: str) -> Any:
        try:
            return self.d[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


class _Walk:
    """The state of one `verify` walk over the entries, oldest first."""

    def __init__(self, log_: AuditLog, head: Any) -> None:
        self.log, self.head = log_, head
        self.legacy_seq = head.legacy_seq if head is not None else 0
        self.prev, self.n, self.last = GENESIS, 0, 0
        self.bad: tuple[int, str] | None = None

    def step(self, r: Any) -> bool:
        """Check one entry; False (and `bad` set) at the first one that does not verify."""
        if r.seq <= self.legacy_seq:
            ok = r.prev_hash == self.prev and r.hash == legacy_hash(self.prev, r)
            if not ok:
                why = (
                    "did not verify when the chain was keyed (an old dir's damage, or the "
                    "anchor table was dropped)"
                    if self.head.legacy_bad == r.seq
                    else "was altered (an entry from before keying)"
                )
                self.bad = (r.seq, f"entry {r.seq} {why}")
        elif r.seq != self.last + 1:
            self.bad = (self.last + 1, f"entries {self.last + 1}..{r.seq - 1} are missing")
        elif r.prev_hash != self.prev:
            self.bad = (r.seq, f"entry {r.seq} does not follow the one before it")
        elif not hmac.compare_digest(r.hash, self.log.entry_mac(r.seq, self.prev, r)):
            self.bad = (r.seq, f"entry {r.seq} was altered or forged (its MAC does not verify)")
        elif self.head is not None and self.n >= self.head.entries:
            self.bad = (r.seq, f"entry {r.seq} lies beyond the anchor's {self.head.entries}")
        if self.bad is not None:
            return False
        self.prev, self.n, self.last = r.hash, self.n + 1, r.seq
        return True

    def verdict(self) -> AuditVerdict:
        head, after = self.head, self.last + 1
        fault: tuple[int | None, str] | None = None
        if head is not None and head.key_id != self.log.key_id:
            fault = (after, f"the chain was keyed with another key (check {KEY_ENV})")
        elif head is not None and head.legacy_bad is not None:
            fault = (
                head.legacy_bad,
                f"entry {head.legacy_bad} was already broken when the chain was keyed (an old "
                "dir's damage, or the anchor table was dropped)",
            )
        elif self.bad is not None:
            fault = self.bad
        elif head is None:
            fault = (after, "the audit anchor is missing")
        elif not hmac.compare_digest(head.mac, self.log.anchor_mac(head)):
            fault = (after, "the audit anchor was altered or found damaged")
        elif self.n != head.entries or self.prev != head.head_hash:
            fault = (
                after,
                f"entries are missing at the end: the anchor counts {head.entries} "
                f"up to entry {head.head_seq}, the log holds {self.n}",
            )
        if fault is None:
            return AuditVerdict(intact=True, reason="intact", entries=self.n)
        return AuditVerdict(intact=False, first_bad_seq=fault[0], reason=fault[1], entries=self.n)


def _now() -> float:
    return datetime.now(UTC).timestamp()
