"""`memos-agents channel ...`: MemStore channels, publish and subscribe between agents."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import DirOpt, UserOpt, console, dump, opened

app = typer.Typer(help="MemStore channels: publish and subscribe between agents.")


@app.command("list")
def channel_list(data_dir: DirOpt = Path(".memos")) -> None:
    """Channels with their counts and subscribers."""
    with opened(data_dir) as mem:
        dump([c.model_dump(mode="json") for c in mem.channels()])


@app.command("publish")
def channel_publish(
    channel: str,
    text: str,
    user: UserOpt,
    agent: Annotated[str | None, typer.Option("--agent")] = None,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Publish a text as a new shared cube."""
    with opened(data_dir) as mem:
        for d in mem.publish(channel, text, user_id=user, agent_id=agent):
            console.print(f"{d.seq} {d.cube.id}")


@app.command("subscribe")
def channel_subscribe(
    channel: str,
    subscriber: str,
    latest: Annotated[bool, typer.Option(help="start after what is already there")] = False,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Create a durable subscription."""
    with opened(data_dir) as mem:
        mem.subscribe(channel, subscriber, start="latest" if latest else "earliest")
        console.print(f"{subscriber} subscribed to {channel}")


@app.command("poll")
def channel_poll(
    channel: str,
    subscriber: str,
    limit: int = 100,
    ack: Annotated[bool, typer.Option(help="acknowledge what was received")] = False,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Print what arrived since the last acknowledgement (as JSON)."""
    with opened(data_dir) as mem:
        got = mem.poll(channel, subscriber, limit=limit)
        if ack and got:
            mem.ack(channel, subscriber, got[-1].seq)
        dump([d.model_dump(mode="json") for d in got])


@app.command("ack")
def channel_ack(channel: str, subscriber: str, seq: int, data_dir: DirOpt = Path(".memos")) -> None:
    """Acknowledge everything up to SEQ."""
    with opened(data_dir) as mem:
        console.print(f"cursor at {mem.ack(channel, subscriber, seq)}")
