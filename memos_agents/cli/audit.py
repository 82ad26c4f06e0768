"""`memos-agents audit ...`: the hash-chained audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import DirOpt, console, dump, err, opened

app = typer.Typer(help="The hash-chained audit log.")


@app.command("verify")
def audit_verify(data_dir: DirOpt = Path(".memos")) -> None:
    """Check that no audit entry was altered or removed."""
    with opened(data_dir) as mem:
        ok, bad = mem.verify_audit()
        if not ok:
            err.print(f"[red]audit chain broken at entry {bad}[/red]")
            raise typer.Exit(3)
        console.print("audit chain intact")


@app.command("show")
def audit_show(
    cube: Annotated[str | None, typer.Option("--cube", help="only entries about this cube")] = None,
    limit: int = 100,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Audit entries, oldest first."""
    with opened(data_dir) as mem:
        dump([e.model_dump(mode="json") for e in mem.audit_log(cube_id=cube, limit=limit)])
