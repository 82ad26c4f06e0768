"""Tables that several processes open and write at once.

On PostgreSQL two processes creating the same table race (one of them fails on the catalog's
own unique index, `pg_type`); `create_tables` retries, and the loser finds the tables there.
`upsert` writes a row by key in one statement, so two writers of one key cannot collide.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import MetaData, Table, insert, inspect, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

from .errors import StoreError

ATTEMPTS = 5


def create_tables(metadata: MetaData, engine: Engine, what: str) -> None:
    """`metadata.create_all(engine)`, retried while another process creates the same tables;
    StoreError naming `what` if it still fails."""
    for attempt in range(ATTEMPTS):
        try:
            metadata.create_all(engine)
            return
        except (ProgrammingError, IntegrityError, OperationalError) as exc:
            if attempt == ATTEMPTS - 1:
                raise StoreError(f"cannot create the {what} tables: {exc}") from exc
            time.sleep(random.uniform(0.01, 0.1) * (attempt + 1))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot create the {what} tables: {exc}") from exc


def add_missing_indexes(table: Table, engine: Engine, what: str) -> None:
    """Create the indexes of `table` that a database made before them lacks (`create_all`
    adds none to an existing table; run it after the columns they need were added). One that
    another process adds at the same time is fine; StoreError naming `what` otherwise."""
    def present() -> set[str]:
        return {str(i["name"]) for i in inspect(engine).get_indexes(table.name)}

    have = present()
    for ix in sorted(table.indexes, key=lambda i: str(i.name)):
        if ix.name in have:
            continue
        try:
            ix.create(engine, checkfirst=True)
        except SQLAlchemyError as exc:
            if ix.name not in present():
                raise StoreError(f"cannot add {ix.name} to the {what} tables: {exc}") from exc


def upsert(conn: Connection, table: Table, row: dict[str, Any], keys: Sequence[str]) -> None:
    """Insert `row`, or set its other columns on the row with the same `keys`: one statement
    on SQLite and PostgreSQL (two writers of one key cannot collide); update-then-insert on
    other databases."""
    rest = {c: v for c, v in row.items() if c not in keys}
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        stmt = (sqlite_insert if name == "sqlite" else pg_insert)(table).values(**row)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[table.c[k] for k in keys],
            set_={c: stmt.excluded[c] for c in rest}))
        return
    where = [table.c[k] == row[k] for k in keys]
    if not conn.execute(update(table).where(*where).values(**rest)).rowcount:
        conn.execute(insert(table).values(**row))
