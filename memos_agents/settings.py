"""Typed settings: one pydantic model per kind of setting, one row per (kind, scope).

    settings = SettingsStore(catalog.engine, legacy=catalog)
    settings.set(RetentionPolicy(max_count=100), scope="user:alice")
    settings.get(RetentionPolicy, scope="user:alice")      # -> RetentionPolicy | None
    settings.delete(RetentionPolicy, scope="user:alice")

The kind of a model is its `settings_kind` class variable, or its class name. Rows live in
their own table (`memos_settings`) beside the catalog's, on SQLite or PostgreSQL.

Data dirs written before this store kept settings as JSON strings under composed keys in the
catalog's key-value table (``redaction:{vault}``, ``retention:{vault}``, ...). A caller that
names the old key (`legacy_key=`) gets it read on a miss and moved here, so old dirs keep their
policies. A legacy value of ``{}`` meant "none" and reads as None.

Infrastructure: this module knows pydantic and SQLAlchemy, nothing above them.
"""

from __future__ import annotations

import os
import time
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import JSON, Column, Float, MetaData, String, Table, delete, select
from sqlalchemy.engine import Engine

from .errors import InvalidInput, StoreError
from .tables import create_tables, upsert

T = TypeVar("T", bound=BaseModel)

settings_metadata = MetaData()

settings_t = Table(
    "memos_settings",
    settings_metadata,
    Column("kind", String(128), primary_key=True),
    Column("scope", String(1024), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)

_NONE = ("", "{}", "null")  # how the legacy key-value table spelled "no setting"

SCHEDULER_ENV = "MEMOS_SCHEDULER"  # "on" / "off" / seconds between policy passes
_ON = ("1", "true", "on", "yes")
_OFF = ("", "0", "false", "off", "no")


def scheduler_switch(value: Any) -> bool | float:
    """Whether `MemOS.open` starts the scheduler worker: False (no), True (yes, every
    `SchedulerPolicy.tick_interval_s`) or seconds between its policy passes.

    `value` is `MemOS.open(scheduler=...)`: a bool, a positive number of seconds, or None for
    the `MEMOS_SCHEDULER` environment variable (on / off / seconds; unset: off)."""
    if value is None:
        raw = os.environ.get(SCHEDULER_ENV, "").strip().lower()
        if raw in _OFF or raw in _ON:
            return raw in _ON
        try:
            value = float(raw)
        except ValueError as exc:
            raise InvalidInput(f"{SCHEDULER_ENV} must be on, off or seconds, not {raw!r}") from exc
    if isinstance(value, bool):
        return value
    if not isinstance(value, int | float) or not 0 < value < 86400:
        raise InvalidInput("scheduler must be True, False or seconds between passes (0..86400)")
    return float(value)


class LegacyMeta(Protocol):
    """The key-value table settings lived in before (the catalog's `memos_meta`)."""

    def get_meta(self, key: str) -> str | None: ...

    def delete_meta(self, key: str) -> None: ...


def kind_of(model: type[BaseModel]) -> str:
    """The kind a model is stored under: its `settings_kind` class variable or its name."""
    kind = getattr(model, "settings_kind", None)
    return kind if isinstance(kind, str) and kind else model.__name__


class SettingsStore:
    """Typed settings over the catalog's database: `get`, `set`, `delete` by model and scope."""

    def __init__(self, engine: Engine, legacy: LegacyMeta | None = None) -> None:
        self.engine = engine
        self.legacy = legacy
        create_tables(settings_metadata, engine, "settings")

    def get(self, model: type[T], scope: str = "", *, legacy_key: str | None = None) -> T | None:
        """The setting of this kind for `scope`, or None; with `legacy_key`, a value found only
        under that key of the legacy table is moved here first."""
        with self.engine.connect() as c:
            value = c.execute(_value_of(kind_of(model), scope)).scalar()
        if value is None:
            return self._migrate(model, scope, legacy_key) if legacy_key else None
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            kind = kind_of(model)
            raise StoreError(f"stored {kind} setting {scope!r} is invalid: {exc}") from exc

    def set(self, value: BaseModel, scope: str = "") -> None:
        """Store `value` as the setting of its kind for `scope` (replacing any)."""
        row = {
            "kind": kind_of(type(value)),
            "scope": scope,
            "value": value.model_dump(mode="json"),
            "updated_at": time.time(),
        }
        with self.engine.begin() as c:
            upsert(c, settings_t, row, keys=("kind", "scope"))

    def delete(
        self, model: type[BaseModel], scope: str = "", *, legacy_key: str | None = None
    ) -> None:
        """Remove the setting (and the legacy key, so that it cannot come back)."""
        with self.engine.begin() as c:
            c.execute(
                delete(settings_t).where(
                    settings_t.c.kind == kind_of(model), settings_t.c.scope == scope
                )
            )
        if legacy_key and self.legacy is not None:
            self.legacy.delete_meta(legacy_key)

    def scopes(self, model: type[BaseModel]) -> list[str]:
        """Every scope that has a setting of this kind (legacy keys not included)."""
        with self.engine.connect() as c:
            q = select(settings_t.c.scope).where(settings_t.c.kind == kind_of(model))
            return sorted(c.execute(q).scalars())

    def _migrate(self, model: type[T], scope: str, legacy_key: str) -> T | None:
        if self.legacy is None:
            return None
        raw = self.legacy.get_meta(legacy_key)
        if raw is None:
            return None
        if raw.strip() in _NONE:
            self.legacy.delete_meta(legacy_key)
            return None
        try:
            value = model.model_validate_json(raw)
        except ValidationError as exc:
            raise StoreError(f"legacy setting {legacy_key!r} is invalid: {exc}") from exc
        self.set(value, scope)
        self.legacy.delete_meta(legacy_key)
        return value


def _value_of(kind: str, scope: str) -> Any:
    return select(settings_t.c.value).where(settings_t.c.kind == kind, settings_t.c.scope == scope)
