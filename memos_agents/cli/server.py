"""`memos-agents serve` (the HTTP server) and `memos-agents key ...` (its API keys)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import MemOSError
from ..localhost import is_loopback
from .common import DirOpt, JsonOpt, console, dump, err, opened

if TYPE_CHECKING:
    from ..vector.chroma_server import Attachment

app = typer.Typer(help="The server's API keys: each names one principal, shown once.")


def _share_vectors(data_dir: Path) -> Attachment | None:
    """The dir's shared vector server for every worker (started here unless it runs), or None
    when the vector index is not embedded."""
    from ..config import MemOSConfig
    from ..vector.chroma_server import attach

    try:
        embedded = MemOSConfig(data_dir=data_dir).chroma_url is None
        return attach(data_dir / "chroma", shared=True) if embedded else None
    except (MemOSError, ValueError) as exc:  # a bad MEMOS_* setting is a ValueError
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _check_auth(data_dir: Path, host: str) -> bool:
    """Whether an active API key exists; exits if `host` is not loopback and none does."""
    from ..keys import KeyStore

    with opened(data_dir) as mem:
        have_keys = KeyStore(mem.vault.catalog.engine).any_active()
    if not is_loopback(host) and not have_keys:
        err.print(f"[red]error:[/red] refusing to serve on {host} without authentication: "
                  "create a key first (memos-agents key create --principal user:<id>)")
        raise typer.Exit(2)
    return have_keys


def serve(
    data_dir: DirOpt = Path(".memos"),
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8765,
    workers: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
    scheduler: Annotated[bool, typer.Option(help="run the scheduler's worker")] = True,
) -> None:
    """Serve REST (/v1), the LangGraph store API (/store) and MCP (/mcp) over one data dir.
    A key is required once any exists; a non-loopback address needs one to exist. Every
    worker (and every other server of the dir) shares one vector server of the dir; the last
    server to exit stops it if one of them started it."""
    import uvicorn

    vectors = _share_vectors(data_dir)
    try:
        have_keys = _check_auth(data_dir, host)
        os.environ["MEMOS_DIR"] = str(data_dir)
        os.environ["MEMOS_SCHEDULER"] = "1" if scheduler else "0"
        os.environ["MEMOS_SERVER_AUTH"] = "auto" if is_loopback(host) else "required"
        if not have_keys:
            err.print("[yellow]open mode:[/yellow] no API keys yet, every request is 'system' "
                      "(loopback only); create a key to require one")
        uvicorn.run("memos_agents.server.app:app_from_env", factory=True, host=host, port=port,
                    workers=workers, log_level="warning")
    finally:
        if vectors is not None:
            vectors.close()


@app.command("create")
def create_cmd(
    principal: Annotated[str, typer.Option(help="who the key stands for: user:<id>, agent:<id>")],
    vault: Annotated[list[str] | None, typer.Option(help="limit the key to this vault (repeat)")]
    = None,
    role: Annotated[str | None, typer.Option(help="grant the principal this role in --vault")]
    = None,
    label: Annotated[str, typer.Option(help="a note kept with the key")] = "",
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Create a key and print its secret once (only its hash is kept)."""
    from ..governance import SYSTEM, check_principal
    from ..keys import KeyStore

    with opened(data_dir) as mem:
        check_principal(principal)
        if principal == SYSTEM:
            err.print("[red]error:[/red] a key cannot stand for 'system'")
            raise typer.Exit(2)
        if role is not None:
            for v in vault or [mem.config.vault]:
                mem.grant_role(v, principal, role)
        rec, secret = KeyStore(mem.vault.catalog.engine).create(
            principal, vaults=vault or None, label=label)
        mem.governance.audit(SYSTEM, "key_create", vault=(vault or [None])[0],
                             detail=f"key {rec.id} for {principal}")
    console.print(f"key {rec.id} for {principal} (shown once, keep it):")
    print(secret)


@app.command("list")
def list_cmd(
    data_dir: DirOpt = Path(".memos"),
    revoked: Annotated[bool, typer.Option("--revoked", help="include revoked keys")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The keys (never their secrets)."""
    from ..keys import KeyStore

    with opened(data_dir) as mem:
        keys = KeyStore(mem.vault.catalog.engine).list(include_revoked=revoked)
    if as_json:
        dump([k.model_dump() for k in keys])
        return
    for k in keys:
        state = "revoked" if k.revoked_at else "active"
        console.print(f"{k.id}  {k.principal}  vaults={k.vaults or 'all'}  {state}  {k.label}")


@app.command("revoke")
def revoke_cmd(key_id: str, data_dir: DirOpt = Path(".memos")) -> None:
    """Revoke a key: requests carrying it are refused from then on."""
    from ..governance import SYSTEM
    from ..keys import KeyStore

    with opened(data_dir) as mem:
        rec = KeyStore(mem.vault.catalog.engine).revoke(key_id)
        mem.governance.audit(SYSTEM, "key_revoke", detail=f"key {rec.id} of {rec.principal}")
    console.print(f"revoked {rec.id} ({rec.principal})")


__all__ = ["app", "serve"]
