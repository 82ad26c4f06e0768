"""`memos-agents`: the command line over the same facade as the Python API."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import MemOSError

app = typer.Typer(help="memos-agents: a memory OS for LLM agents.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

DirOpt = Annotated[Path, typer.Option("--dir", "-d", envvar="MEMOS_DIR", help="data directory")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
UserOpt = Annotated[str, typer.Option("--user", "-u", help="user id")]
VaultOpt = Annotated[str | None, typer.Option("--vault", help="vault name")]


@contextmanager
def opened(data_dir: Path, **settings: Any) -> Any:
    from .mos import MemOS

    try:
        mem = MemOS.open(data_dir, **settings)
    except MemOSError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    try:
        yield mem
    except MemOSError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        mem.close()


def _dump(obj: Any) -> None:
    console.print_json(json.dumps(obj, default=str, ensure_ascii=False))


def _cube_rows(cubes: list[Any], scores: list[float] | None = None) -> Table:
    table = Table(show_lines=False)
    if scores is not None:
        table.add_column("score", justify="right")
    for col in ("id", "user", "session", "speaker", "content"):
        table.add_column(col, overflow="fold")
    for i, c in enumerate(cubes):
        row = [
            c.id,
            c.scope.user_id,
            c.scope.session_id or "",
            c.provenance.speaker or "",
            c.content[:160],
        ]
        table.add_row(*([f"{scores[i]:.3f}"] if scores is not None else []), *row)
    return table


@app.command()
def init(
    data_dir: DirOpt = Path(".memos"),
    embedder: Annotated[
        str | None,
        typer.Option(
            help="all-MiniLM-L6-v2 (default), all-MiniLM-L6-v2-int8 (faster), or a "
            "sentence-transformers model id or path; fixed for the dir once set"
        ),
    ] = None,
) -> None:
    """Create the data dir with its catalog, vector index and graph."""
    with opened(data_dir, **({"embedder": embedder} if embedder else {})) as mem:
        console.print(
            f"initialised {mem.config.data_dir.resolve()} (embedder {mem.vault.embedder.name})"
        )


@app.command()
def add(
    text: str,
    user: UserOpt,
    session: Annotated[str | None, typer.Option("--session", "-s")] = None,
    agent: Annotated[str | None, typer.Option("--agent")] = None,
    role: str = "user",
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t")] = None,
    ttl: Annotated[float | None, typer.Option(help="seconds until the memory expires")] = None,
    vault: VaultOpt = None,
    data_dir: DirOpt = Path(".memos"),
    as_json: JsonOpt = False,
) -> None:
    """Remember one message."""
    with opened(data_dir) as mem:
        cubes = mem.add(
            [{"role": role, "content": text}],
            user_id=user,
            session_id=session,
            agent_id=agent,
            tags=tag,
            ttl=ttl,
            vault=vault,
        )
        if as_json:
            _dump([c.model_dump(mode="json") for c in cubes])
        else:
            for c in cubes:
                console.print(c.id)


@app.command()
def ingest(
    file: Path,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="user id (default: from file)")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto | jsonl | locomo")] = "auto",
    vault: VaultOpt = None,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Ingest a conversation file: JSONL of messages, or LoCoMo JSON."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .formats import read_batches

    with opened(data_dir) as mem:
        batches = list(read_batches(file, fmt))  # type: ignore[arg-type]
        total = sum(len(b.messages) for b in batches)
        added = 0
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
        ) as bar:
            task = bar.add_task(f"ingest {file.name}", total=total)
            for b in batches:
                uid = user or b.user_id
                if not uid:
                    err.print(
                        "[red]error:[/red] no user id: pass --user or put user_id in the file"
                    )
                    raise typer.Exit(2)
                added += len(
                    mem.add(
                        b.messages,
                        user_id=uid,
                        session_id=b.session_id,
                        vault=vault,
                        progress=lambda n: bar.advance(task, n),
                    )
                )
        console.print(f"ingested {added} memories from {file}")


@app.command()
def search(
    query: str,
    user: UserOpt,
    k: Annotated[int, typer.Option("-k")] = 5,
    session: Annotated[str | None, typer.Option("--session", "-s")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t")] = None,
    vault: VaultOpt = None,
    data_dir: DirOpt = Path(".memos"),
    as_json: JsonOpt = False,
) -> None:
    """Search a user's memories."""
    with opened(data_dir) as mem:
        hits = mem.search(query, user_id=user, k=k, session_id=session, tags=tag, vault=vault)
        if as_json:
            _dump([{"score": h.score, **h.cube.model_dump(mode="json")} for h in hits])
        else:
            console.print(_cube_rows([h.cube for h in hits], [h.score for h in hits]))


@app.command()
def show(cube_id: str, data_dir: DirOpt = Path(".memos")) -> None:
    """Show one cube, every field."""
    with opened(data_dir) as mem:
        _dump(mem.get(cube_id).model_dump(mode="json"))


@app.command()
def history(cube_id: str, data_dir: DirOpt = Path(".memos"), as_json: JsonOpt = False) -> None:
    """Every version of a cube, with who changed it and when."""
    with opened(data_dir) as mem:
        records = mem.history(cube_id)
        if as_json:
            _dump([r.model_dump(mode="json") for r in records])
            return
        table = Table()
        for col in ("version", "op", "by", "at", "state", "content"):
            table.add_column(col, overflow="fold")
        for r in records:
            table.add_row(
                str(r.version),
                r.op,
                r.changed_by,
                r.changed_at.isoformat(),
                r.cube.lifecycle.state.value,
                r.cube.content[:120],
            )
        console.print(table)


@app.command()
def delete(
    cube_id: str,
    purge: Annotated[bool, typer.Option(help="erase content and versions for good")] = False,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Delete a cube (a tombstone that history keeps), or --purge it."""
    with opened(data_dir) as mem:
        if purge:
            mem.purge(cube_id)
            console.print(f"purged {cube_id}")
        else:
            c = mem.delete(cube_id)
            console.print(f"deleted {cube_id} (version {c.lifecycle.version})")


@app.command()
def graph(
    user: UserOpt,
    vault: VaultOpt = None,
    dot: Annotated[bool, typer.Option("--dot", help="Graphviz instead of a text tree")] = False,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Show a user's topic -> concept -> fact hierarchy."""
    with opened(data_dir) as mem:
        tree = mem.graph(user_id=user, vault=vault)
        console.print(tree.to_dot() if dot else tree.render(), markup=False, highlight=False)


@app.command()
def stats(data_dir: DirOpt = Path(".memos")) -> None:
    """Counts per state and form, vectors, graph nodes."""
    with opened(data_dir) as mem:
        _dump(mem.stats())


channel_app = typer.Typer(help="MemStore channels: publish and subscribe between agents.")
app.add_typer(channel_app, name="channel")

from .model.cli import app as model_app  # noqa: E402
from .scheduler import app as scheduler_app  # noqa: E402

app.add_typer(model_app, name="model")
app.add_typer(scheduler_app, name="scheduler")


@channel_app.command("list")
def channel_list(data_dir: DirOpt = Path(".memos")) -> None:
    """Channels with their counts and subscribers."""
    with opened(data_dir) as mem:
        _dump([c.model_dump(mode="json") for c in mem.channels()])


@channel_app.command("publish")
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


@channel_app.command("subscribe")
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


@channel_app.command("poll")
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
        _dump([d.model_dump(mode="json") for d in got])


@channel_app.command("ack")
def channel_ack(channel: str, subscriber: str, seq: int, data_dir: DirOpt = Path(".memos")) -> None:
    """Acknowledge everything up to SEQ."""
    with opened(data_dir) as mem:
        console.print(f"cursor at {mem.ack(channel, subscriber, seq)}")


audit_app = typer.Typer(help="The hash-chained audit log.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(data_dir: DirOpt = Path(".memos")) -> None:
    """Check that no audit entry was altered or removed."""
    with opened(data_dir) as mem:
        ok, bad = mem.verify_audit()
        if not ok:
            err.print(f"[red]audit chain broken at entry {bad}[/red]")
            raise typer.Exit(3)
        console.print("audit chain intact")


@audit_app.command("show")
def audit_show(
    cube: Annotated[str | None, typer.Option("--cube", help="only entries about this cube")] = None,
    limit: int = 100,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Audit entries, oldest first."""
    with opened(data_dir) as mem:
        _dump([e.model_dump(mode="json") for e in mem.audit_log(cube_id=cube, limit=limit)])


@app.command("export")
def export_cmd(
    file: Path,
    user: Annotated[str | None, typer.Option("--user", "-u")] = None,
    vault: VaultOpt = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t")] = None,
    include_deleted: bool = False,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Export cubes with versions and provenance as a MIP file."""
    with opened(data_dir) as mem:
        doc = mem.export(file, user_id=user, vault=vault, tags=tag, include_deleted=include_deleted)
        console.print(f"exported {len(doc.cubes)} cubes to {file}")


@app.command("import")
def import_cmd(
    file: Path,
    user: Annotated[str | None, typer.Option("--user", "-u", help="new user scope")] = None,
    vault: Annotated[str | None, typer.Option("--vault", help="target vault")] = None,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Import a MIP file (refused, naming the field, if it fails the schema)."""
    with opened(data_dir) as mem:
        console.print(f"imported {len(mem.import_file(file, vault=vault, user_id=user))} cubes")


@app.command()
def grant(
    vault: str,
    principal: str,
    role: Annotated[str, typer.Argument(help="owner | admin | writer | reader")],
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Give a principal (user:ID or agent:ID) a role in a vault."""
    with opened(data_dir) as mem:
        mem.grant_role(vault, principal, role)
        console.print(f"{principal} is {role} of {vault}")


@app.command()
def down(data_dir: DirOpt = Path(".memos")) -> None:
    """Stop the embedded graph server of this data dir (it also stops itself when idle)."""
    from .graph.falkordb_server import stop_server

    was = stop_server(data_dir / "graph")
    console.print("graph server stopped" if was else "no graph server was running")


@app.command()
def demo(data_dir: DirOpt = Path(".memos-demo")) -> None:
    """Run a short tour on the embedded defaults."""
    from .demo import run

    run(data_dir, console)


def main() -> None:
    app()
