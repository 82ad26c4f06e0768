"""MemStore: publish/subscribe of cubes between agents.

Channels are append-only logs in the catalog. Each subscriber has a durable cursor (the last
sequence number it acknowledged), so delivery is at-least-once: `poll` hands out everything
after the cursor, `ack` moves it. Any process sharing the catalog sees the same channels.
Only cubes whose visibility is shared or public can be published, and a subscriber only ever
receives cubes that are still live.

A subscription belongs to the principal that created it (`memos_subscription_owners`): the
facade lets only that principal (or system) poll, ack or re-subscribe it. Subscriptions made
before owners were recorded belong to system.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel
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
    select,
    update,
)
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from .catalog import Catalog
from .cube import MemCube, Visibility, check_name
from .errors import InvalidInput, NotFound, ScopeViolation
from .tables import create_tables

_CHANNEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")

store_metadata = MetaData()

channels_t = Table(
    "memos_channels",
    store_metadata,
    Column("name", String(128), primary_key=True),
    Column("created_by", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("description", Text, nullable=False, default=""),
)

channel_log_t = Table(
    "memos_channel_log",
    store_metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("channel", String(128), nullable=False, index=True),
    Column("cube_id", String(64), nullable=False),
    Column("published_by", String(256), nullable=False),
    Column("published_at", Float, nullable=False),
)

subscriptions_t = Table(
    "memos_subscriptions",
    store_metadata,
    Column("channel", String(128), primary_key=True),
    Column("subscriber", String(256), primary_key=True),
    Column("cursor", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)


# who owns each subscription; a table of its own, so data dirs made before it just gain it
subscription_owners_t = Table(
    "memos_subscription_owners",
    store_metadata,
    Column("channel", String(128), primary_key=True),
    Column("subscriber", String(256), primary_key=True),
    Column("owner", String(256), nullable=False),
)

LEGACY_OWNER = "system"  # the owner of a subscription made before owners were recorded


class Channel(BaseModel):
    name: str
    created_by: str
    created_at: datetime
    description: str = ""
    published: int = 0
    subscribers: list[str] = []


class Delivery(BaseModel):
    """One published cube as a subscriber receives it. `ack` it by `seq`."""

    seq: int
    channel: str
    cube: MemCube
    published_by: str
    published_at: datetime


def check_channel(name: str) -> str:
    if not isinstance(name, str) or not _CHANNEL_RE.match(name):
        raise InvalidInput(
            f"channel name {name!r} must be 1-128 characters of letters, digits and _ . : / -, "
            "starting with a letter or digit"
        )
    return name


def _now() -> float:
    return datetime.now(UTC).timestamp()


class MemStore:
    """Channels of cubes over the catalog's database."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.engine = catalog.engine
        create_tables(store_metadata, self.engine, "channel")

    def create_channel(self, name: str, created_by: str, description: str = "") -> Channel:
        check_channel(name)
        check_name(created_by, "created_by")
        with suppress(SAIntegrityError), self.engine.begin() as conn:  # idempotent
            conn.execute(
                insert(channels_t).values(
                    name=name, created_by=created_by, created_at=_now(), description=description
                )
            )
        return self.channel(name)

    def channel(self, name: str) -> Channel:
        with self.engine.connect() as conn:
            row = conn.execute(select(channels_t).where(channels_t.c.name == name)).first()
            if row is None:
                raise NotFound(f"no channel named {name!r}")
            published = conn.execute(
                select(func.count()).where(channel_log_t.c.channel == name)
            ).scalar()
            subs = conn.execute(
                select(subscriptions_t.c.subscriber)
                .where(subscriptions_t.c.channel == name)
                .order_by(subscriptions_t.c.subscriber)
            ).scalars()
            return Channel(
                name=row.name,
                created_by=row.created_by,
                created_at=datetime.fromtimestamp(row.created_at, UTC),
                description=row.description,
                published=published or 0,
                subscribers=list(subs),
            )

    def channels(self) -> list[Channel]:
        with self.engine.connect() as conn:
            names = conn.execute(select(channels_t.c.name).order_by(channels_t.c.name)).scalars()
            return [self.channel(n) for n in list(names)]

    @staticmethod
    def check_publishable(cubes: Sequence[MemCube]) -> None:
        """Raise unless every cube may go into a channel: shared or public, and live."""
        for cube in cubes:
            if cube.governance.visibility is Visibility.private:
                raise ScopeViolation(
                    f"cube {cube.id} is private; only shared or public cubes can be published"
                )
            if not cube.is_live():
                raise InvalidInput(f"cube {cube.id} is {cube.lifecycle.state.value}, not live")

    def publish(self, channel: str, cubes: Sequence[MemCube], published_by: str) -> list[int]:
        """Append cubes to a channel (created on first use); returns their sequence numbers."""
        check_channel(channel)
        check_name(published_by, "published_by")
        self.check_publishable(cubes)
        self.create_channel(channel, published_by)
        seqs = []
        with self.engine.begin() as conn:
            for cube in cubes:
                res = conn.execute(
                    insert(channel_log_t).values(
                        channel=channel,
                        cube_id=cube.id,
                        published_by=published_by,
                        published_at=_now(),
                    )
                )
                seqs.append(int(res.inserted_primary_key[0]))
        return seqs

    def owner(self, channel: str, subscriber: str) -> str | None:
        """The principal a subscription belongs to; None if there is no such subscription."""
        with self.engine.connect() as conn:
            exists = conn.execute(
                select(subscriptions_t.c.cursor).where(
                    subscriptions_t.c.channel == channel, subscriptions_t.c.subscriber == subscriber
                )
            ).first()
            if exists is None:
                return None
            owner = conn.execute(
                select(subscription_owners_t.c.owner).where(
                    subscription_owners_t.c.channel == channel,
                    subscription_owners_t.c.subscriber == subscriber,
                )
            ).scalar()
        return LEGACY_OWNER if owner is None else str(owner)

    def subscribe(
        self,
        channel: str,
        subscriber: str,
        start: Literal["earliest", "latest"] = "earliest",
        owner: str = LEGACY_OWNER,
    ) -> Channel:
        """Register a durable subscription owned by `owner` (idempotent: an existing cursor and
        owner are kept; the facade checks the owner first)."""
        check_channel(channel)
        check_name(subscriber, "subscriber")
        check_name(owner, "owner")
        if start not in ("earliest", "latest"):
            raise InvalidInput("start must be 'earliest' or 'latest'")
        self.create_channel(channel, subscriber)
        with self.engine.connect() as conn:
            latest = conn.execute(
                select(func.coalesce(func.max(channel_log_t.c.seq), 0)).where(
                    channel_log_t.c.channel == channel
                )
            ).scalar()
        cursor = latest if start == "latest" else 0
        # an existing subscription keeps its cursor: the insert then fails on the primary key
        with suppress(SAIntegrityError), self.engine.begin() as conn:
            conn.execute(
                insert(subscriptions_t).values(
                    channel=channel, subscriber=subscriber, cursor=cursor, created_at=_now()
                )
            )
            conn.execute(
                insert(subscription_owners_t).values(
                    channel=channel, subscriber=subscriber, owner=owner
                )
            )
        return self.channel(channel)

    def _cursor(self, channel: str, subscriber: str) -> int:
        with self.engine.connect() as conn:
            cursor = conn.execute(
                select(subscriptions_t.c.cursor).where(
                    subscriptions_t.c.channel == channel, subscriptions_t.c.subscriber == subscriber
                )
            ).scalar()
        if cursor is None:
            raise NotFound(f"{subscriber!r} is not subscribed to channel {channel!r}")
        return int(cursor)

    def poll(
        self,
        channel: str,
        subscriber: str,
        limit: int = 100,
        allowed: Callable[[list[MemCube]], list[MemCube]] | None = None,
    ) -> list[Delivery]:
        """Up to `limit` deliveries after the subscriber's cursor, oldest first; nothing moves
        until `ack`. Cubes deleted or expired since they were published are skipped, and so are
        those `allowed` (the reader's filter) leaves out; the log is read on past them, so a run
        of skipped cubes never hides what follows."""
        check_channel(channel)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput("limit must be a positive integer")
        after = self._cursor(channel, subscriber)
        out: list[Delivery] = []
        while len(out) < limit:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(channel_log_t)
                    .where(channel_log_t.c.channel == channel, channel_log_t.c.seq > after)
                    .order_by(channel_log_t.c.seq)
                    .limit(limit)
                ).all()
            if not rows:
                break
            after = rows[-1].seq
            found = self._deliveries(channel, rows)
            if allowed is not None:
                keep = {c.id for c in allowed([d.cube for d in found])}
                found = [d for d in found if d.cube.id in keep]
            out += found
        return out[:limit]

    def _deliveries(self, channel: str, rows: Sequence[Any]) -> list[Delivery]:
        cubes = self.catalog.get_many(list({r.cube_id for r in rows}))
        out = []
        for r in rows:
            cube = cubes.get(r.cube_id)
            if cube is None or not cube.is_live() or not cube.intact:
                continue
            if cube.governance.visibility is Visibility.private:
                continue  # made private after publishing: no longer shared
            out.append(
                Delivery(
                    seq=r.seq,
                    channel=channel,
                    cube=cube,
                    published_by=r.published_by,
                    published_at=datetime.fromtimestamp(r.published_at, UTC),
                )
            )
        return out

    def ack(self, channel: str, subscriber: str, seq: int) -> int:
        """Acknowledge everything up to `seq`; the cursor never moves backwards."""
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise InvalidInput("seq must be a non-negative integer")
        self._cursor(channel, subscriber)
        with self.engine.begin() as conn:
            conn.execute(
                update(subscriptions_t)
                .where(
                    subscriptions_t.c.channel == channel,
                    subscriptions_t.c.subscriber == subscriber,
                    subscriptions_t.c.cursor < seq,
                )
                .values(cursor=seq)
            )
        return self._cursor(channel, subscriber)
