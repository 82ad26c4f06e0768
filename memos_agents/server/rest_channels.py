"""REST: channels between agents (publish, durable subscriptions, poll, ack) and a server-sent
events stream of new deliveries. A subscription is its owner's: the facade refuses any other
principal (but system) that names it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query
from sse_starlette import EventSourceResponse

from ..store import Channel, Delivery
from .rest_models import (
    Ack,
    Acked,
    CallerDep,
    Channels,
    Deliveries,
    Publish,
    Subscribe,
)

if TYPE_CHECKING:
    from .auth import Caller

router = APIRouter(prefix="/channels", tags=["channels"])

POLL_S = 0.5  # seconds between looks at the durable store while a stream is open
BATCH = 100  # deliveries a stream asks for at a time
MAX_BATCH = 10_000  # at most, while a subscriber leaves that many unacknowledged

Subscriber = Annotated[str, Query(description="a subscription of this key's principal")]


@router.get("")
def list_channels(who: CallerDep) -> Channels:
    """The channels this key's principal subscribes to (all of them for system)."""
    return Channels(items=who.mem.channels())


@router.post("/{channel}/publish", status_code=201)
def publish(channel: str, body: Publish, who: CallerDep) -> Deliveries:
    """Publish existing shared memories (`cube_id`, `cube_ids`) and/or a text (`memory`, stored
    as a new shared memory of the publisher) to a channel."""
    ids = [*([body.cube_id] if body.cube_id is not None else []), *body.cube_ids]
    for cube_id in ids:
        who.reach(cube_id)
    vault = who.vault(body.vault)
    out = who.mem.publish(
        channel, body.memory, user_id=who.scope_user(body.user_id, vault, "publish"),
        cube_ids=ids, agent_id=body.agent_id, session_id=body.session_id, vault=vault,
        tags=body.tags,
    )
    return Deliveries(items=out)


@router.post("/{channel}/subscribe")
def subscribe(channel: str, body: Subscribe, who: CallerDep) -> Channel:
    """A durable subscription of this key's principal (from the earliest or the latest)."""
    return who.mem.subscribe(channel, body.subscriber, start=body.start)


@router.get("/{channel}/poll")
def poll(channel: str, subscriber: Subscriber, who: CallerDep, limit: int = 100) -> Deliveries:
    """Up to `limit` deliveries since the last ack, oldest first (only memories this key may
    read); nothing moves until `ack`."""
    found = who.mem.poll(channel, subscriber, limit=limit)
    return Deliveries(items=[d for d in found if who.reaches(d.cube)])


@router.post("/{channel}/ack")
def ack(channel: str, body: Ack, who: CallerDep) -> Acked:
    """Acknowledge every delivery up to `seq`; the cursor never moves back."""
    cursor = who.mem.ack(channel, body.subscriber, body.seq)
    return Acked(channel=channel, subscriber=body.subscriber, cursor=cursor)


@router.get("/{channel}/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`delivery` events; each id is the delivery's seq"}})
def events(channel: str, subscriber: Subscriber, who: CallerDep) -> EventSourceResponse:
    """A server-sent events stream of the subscription's deliveries: those not acked yet, then
    each new one as it arrives (event `delivery`, id = seq, data = the delivery). Refused
    (403 / 404) before the stream starts; `ack` as with poll."""
    first = who.mem.poll(channel, subscriber, limit=BATCH)
    return EventSourceResponse(_stream(who, channel, subscriber, first))


def _published(who: Caller, channel: str) -> int:
    """How many deliveries the channel has had: only the stream's signal to poll again (what it
    sends comes from the gated `poll`)."""
    return who.mem.memstore.channel(channel).published


async def _stream(
    who: Caller, channel: str, subscriber: str, batch: list[Delivery]
) -> AsyncIterator[dict[str, Any]]:
    """Send each delivery once, polling again when the channel grew or the last batch was full
    (a subscriber that leaves many unacknowledged gets larger batches, up to MAX_BATCH)."""
    sent, seen, limit = 0, -1, BATCH
    while True:
        new = [d for d in batch if d.seq > sent]
        for d in new:
            if who.reaches(d.cube):
                yield {"id": str(d.seq), "event": "delivery", "data": d.model_dump_json()}
        full = len(batch) >= limit
        if full and not new:
            limit = min(2 * limit, MAX_BATCH)
        sent = max([sent, *(d.seq for d in batch)])
        await asyncio.sleep(POLL_S)
        count = await anyio.to_thread.run_sync(_published, who, channel)
        if count == seen and not full:
            batch = []
            continue
        seen = count
        batch = await anyio.to_thread.run_sync(
            partial(who.mem.poll, channel, subscriber, limit=limit))
