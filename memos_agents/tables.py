"""Creating tables when several processes open one new database at once.

On PostgreSQL two processes creating the same table race (one of them fails on the catalog's
own unique index, `pg_type`); `create_tables` retries, and the loser finds the tables there.
"""

from __future__ import annotations

import random
import time

from sqlalchemy import MetaData, Table, inspect
from sqlalchemy.engine import Engine
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
