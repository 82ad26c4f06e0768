"""`memos-agents audit ...`: the keyed, anchored audit chain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import DirOpt, console, dump, err, opened

app = typer.Typer(help="The keyed, anchored audit chain.")


@app.command("verify")
def audit_verify(data_dir: DirOpt = Path(".memos")) -> None:
    """Check that no audit entry was altered, forged or removed (exit 3 if one was)."""
    with opened(data_dir) as mem:
        verdict = mem.governance.verify()
        if not verdict.intact:
            err.print(
                f"[red]audit chain broken at entry {verdict.first_bad_seq}: {verdict.reason}[/red]",
                markup=True,
                highlight=False,
            )
            raise typer.Exit(3)
        console.print(f"audit chain intact ({verdict.entries} entries)")


@app.command("show")
def audit_show(
    cube: Annotated[str | None, typer.Option("--cube", help="only entries about this cube")] = None,
    limit: int = 100,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Audit entries, oldest first."""
    with opened(data_dir) as mem:
        dump([e.model_dump(mode="json") for e in mem.audit_log(cube_id=cube, limit=limit)])
