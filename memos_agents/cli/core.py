"""The root commands of `memos-agents`: a data dir, its memories, import / export, grants."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import DirOpt, JsonOpt, UserOpt, VaultOpt, console, dump, err, opened

if TYPE_CHECKING:
    from rich.table import Table

    from ..cube import MemCube

app = typer.Typer()


def _cube_rows(cubes: list[MemCube], scores: list[float] | None = None) -> Table:
    from rich.table import Table

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
            dump([c.model_dump(mode="json") for c in cubes])
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

    from ..formats import read_batches

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
            dump([{"score": h.score, **h.cube.model_dump(mode="json")} for h in hits])
        else:
            console.print(_cube_rows([h.cube for h in hits], [h.score for h in hits]))


@app.command()
def show(cube_id: str, data_dir: DirOpt = Path(".memos")) -> None:
    """Show one cube, every field."""
    with opened(data_dir) as mem:
        dump(mem.get(cube_id).model_dump(mode="json"))


@app.command()
def history(cube_id: str, data_dir: DirOpt = Path(".memos"), as_json: JsonOpt = False) -> None:
    """Every version of a cube, with who changed it and when."""
    from rich.table import Table

    with opened(data_dir) as mem:
        records = mem.history(cube_id)
        if as_json:
            dump([r.model_dump(mode="json") for r in records])
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
        console.print(tree.to_dot() if dot else tree.render(), markup=False, highlight=False,
                      soft_wrap=True)


@app.command()
def stats(data_dir: DirOpt = Path(".memos")) -> None:
    """Counts per state and form, vectors, graph nodes."""
    with opened(data_dir) as mem:
        dump(mem.stats())


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
    """Stop the embedded graph server (it also stops itself when idle) and the shared vector
    server of this data dir."""
    from ..graph.falkordb_server import stop_server
    from ..vector.chroma_server import stop_server as stop_vector_server

    # a dir whose stores are servers has no embedded ones: nothing to stop, nothing to create
    was = (data_dir / "graph").is_dir() and stop_server(data_dir / "graph")
    console.print("graph server stopped" if was else "no graph server was running")
    was = (data_dir / "chroma").is_dir() and stop_vector_server(data_dir / "chroma")
    console.print("vector server stopped" if was else "no vector server was running")


@app.command()
def demo(data_dir: DirOpt = Path(".memos-demo")) -> None:
    """Run a short tour on the embedded defaults."""
    from ..demo import run

    run(data_dir, console)


__all__ = ["app"]
