"""`memos-agents`: the command line over the same facade as the Python API.

One module per subject, each with its own typer app, assembled here:

- `core`: init, add, ingest, search, show, history, delete, graph, stats, export, import,
  grant, down, demo (merged into the root);
- `channels`: `memos-agents channel ...` (MemStore publish / subscribe);
- `model`: `memos-agents model ...` (the local model process, activation and parameter memory);
- `scheduler`: `memos-agents scheduler ...` (MemScheduler jobs, policies and plans);
- `audit`: `memos-agents audit ...` (the hash-chained audit log);
- `server`: `memos-agents serve` and `memos-agents key ...` (the HTTP server and its API keys);
- `mcp`: `memos-agents mcp` (the memory tools over MCP on stdio).

The CLI is interface level: it imports the facade and the layers below, never the reverse.
"""

from __future__ import annotations

import typer

from . import audit, channels, core, mcp, model, scheduler, server

app = typer.Typer(help="memos-agents: a memory OS for LLM agents.", no_args_is_help=True)
app.add_typer(core.app)
app.add_typer(channels.app, name="channel")
app.add_typer(model.app, name="model")
app.add_typer(scheduler.app, name="scheduler")
app.add_typer(audit.app, name="audit")
app.add_typer(server.app, name="key")
app.command("serve")(server.serve)
app.command("mcp")(mcp.mcp)


def main() -> None:
    app()


__all__ = ["app", "main"]
