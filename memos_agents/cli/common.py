"""What every command module shares: the consoles, the option types, `opened`, `dump`.

Nothing heavy at module level: `memos-agents --help` imports this, so the facade and its stores
load inside `opened`, on the first command that needs them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from ..errors import MemOSError

if TYPE_CHECKING:
    from ..mos import MemOS

console = Console()
err = Console(stderr=True)

DirOpt = Annotated[Path, typer.Option("--dir", "-d", envvar="MEMOS_DIR", help="data directory")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
UserOpt = Annotated[str, typer.Option("--user", "-u", help="user id")]
VaultOpt = Annotated[str | None, typer.Option("--vault", help="vault name")]


@contextmanager
def opened(data_dir: Path, **settings: Any) -> Iterator[MemOS]:
    """The MemOS of `data_dir`, closed on exit; a MemOSError ends the command with a message
    (exit 2 if the dir cannot be opened, 1 if the command itself failed)."""
    from ..mos import MemOS

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


def dump(obj: Any) -> None:
    """Print `obj` as JSON (non-JSON values as their str)."""
    console.print_json(json.dumps(obj, default=str, ensure_ascii=False))
