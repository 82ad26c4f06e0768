"""`memos-agents scheduler ...`: MemScheduler jobs, policies and plans, through `mem.scheduler`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import DirOpt, JsonOpt, VaultOpt, console, dump, opened

if TYPE_CHECKING:
    from ..scheduler import Job

app = typer.Typer(help="MemScheduler: move memory between plaintext, activation and parameter.")

AnyUserOpt = Annotated[str | None, typer.Option("--user", "-u", help="user id (default: all)")]
OneUserOpt = Annotated[str, typer.Option("--user", "-u")]
CubeIdsOpt = Annotated[list[str] | None, typer.Option("--cube", "-c", help="cube id")]
WaitOpt = Annotated[bool, typer.Option(help="run it now and wait")]


def _print_jobs(jobs: list[Job]) -> None:
    from rich.table import Table

    table = Table()
    for col in ("id", "kind", "state", "user", "cubes", "progress", "reason / result"):
        table.add_column(col, overflow="fold")
    for j in jobs:
        detail = j.reason + (f" -> {json.dumps(j.result, default=str)}" if j.result else "")
        cubes = ", ".join(j.params.get("cube_ids") or [])
        row = (j.id, j.kind, j.state, j.user_id, cubes[:80], f"{j.progress:.0%}")
        table.add_row(*row, (f"{j.error}: " if j.error else "") + detail[:200])
    console.print(table)


def _parse_settings(items: list[str]) -> dict[str, object]:
    """FIELD=VALUE pairs; a VALUE that parses as JSON is taken as JSON, else as a string."""
    changes: dict[str, object] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            changes[key] = json.loads(value)
        except ValueError:
            changes[key] = value
    return changes


@app.command("status")
def status_cmd(
    data_dir: DirOpt = Path(".memos"),
    limit: int = 20,
    as_json: JsonOpt = False,
) -> None:
    """Whether a worker runs, budgets and their use, the hot KV caches, and the latest
    decisions (jobs: promote / demote / archive / distil, their cube ids, reasons, state)."""
    with opened(data_dir) as mem:
        st = mem.scheduler.status(limit=limit)
        if as_json:
            dump(st)
            return
        workers = ", ".join(
            f"{w} (every {b['interval_s']:g} s)" for w, b in st["workers"].items()
        )
        console.print(f"running: {st['running']}" + (f": {workers}" if workers else ""))
        for key, b in st["budgets"].items():
            console.print(f"{key}: {b['used']} of {b['budget']} bytes in {b['cubes']} cube(s)")
        for h in st["hot"]:
            console.print(
                f"KV cache {h['cube_id']} ({h['name']}) of {h['user_id']}: {h['tokens']} "
                f"tokens, {h['bytes']} bytes, {len(h['sources'])} memories, last used "
                f"{h['last_used']}",
                markup=False,
            )
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(st["counts"].items())) or "no jobs"
        console.print(f"jobs: {counts}")
        _print_jobs(mem.scheduler.jobs(limit=limit))


@app.command("scan")
def scan_cmd(
    user: AnyUserOpt = None, vault: VaultOpt = None, data_dir: DirOpt = Path(".memos")
) -> None:
    """What the policies would change now, and why (changes nothing)."""
    with opened(data_dir) as mem:
        dump([p.model_dump() for p in mem.scheduler.scan(user_id=user, vault=vault)])


@app.command("run")
def run_cmd(
    user: AnyUserOpt = None,
    vault: VaultOpt = None,
    distil: Annotated[bool, typer.Option(help="also distil stable clusters")] = False,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Apply the policies once and run every queued job here, in the foreground."""
    with opened(data_dir) as mem:
        sched = mem.scheduler
        queued = sched.tick(user_id=user, vault=vault, distil=distil or None)
        console.print(f"queued {len(queued)} job(s)")
        _print_jobs(sched.run_pending())


@app.command("worker")
def worker_cmd(interval: float = 30.0, data_dir: DirOpt = Path(".memos")) -> None:
    """Run the scheduler until interrupted: policies every INTERVAL seconds, jobs as queued."""
    with opened(data_dir) as mem:
        sched = mem.scheduler
        sched.start(interval=interval)
        console.print(f"scheduler worker {sched.worker_id} running; Ctrl-C stops it")
        try:
            while sched.running:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            sched.stop()


@app.command("promote")
def promote_cmd(
    user: OneUserOpt,
    cube: CubeIdsOpt = None,
    name: str | None = None,
    wait: WaitOpt = True,
    vault: VaultOpt = None,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Queue a KV cache build of these memories (default: the user's hot set)."""
    with opened(data_dir) as mem:
        sched = mem.scheduler
        job = sched.promote(user, cube, vault=vault, name=name)
        _print_jobs(sched.run_pending() if wait else [job] if job else [])


@app.command("distil")
def distil_cmd(
    user: OneUserOpt,
    cube: CubeIdsOpt = None,
    tag: str | None = None,
    name: str | None = None,
    steps: int | None = None,
    wait: WaitOpt = True,
    vault: VaultOpt = None,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Queue distilling memories (ids or a tag) into a LoRA adapter (parameter memory)."""
    with opened(data_dir) as mem:
        sched = mem.scheduler
        job = sched.distil(user, cube, tag=tag, vault=vault, name=name, steps=steps)
        _print_jobs(sched.run_pending() if wait else [job] if job else [])


@app.command("plan")
def plan_cmd(
    task: str,
    user: OneUserOpt,
    k: Annotated[int, typer.Option("-k")] = 5,
    vault: VaultOpt = None,
    data_dir: DirOpt = Path(".memos"),
    as_json: JsonOpt = False,
) -> None:
    """Which memory forms a task would use, in which order, and why."""
    with opened(data_dir) as mem:
        plan = mem.scheduler.plan(task, user_id=user, vault=vault, k=k)
        if as_json:
            dump(plan.model_dump(mode="json"))
        else:
            console.print(plan.explain(), markup=False)


@app.command("policy")
def policy_cmd(
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="FIELD=VALUE (repeatable)")
    ] = None,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Show the policy, or change fields of it (kept in the catalog)."""
    with opened(data_dir) as mem:
        sched = mem.scheduler
        if set_:
            sched.set_policy(**_parse_settings(set_))
        dump(sched.policy.model_dump())


@app.command("cancel")
def cancel_cmd(job_id: str, data_dir: DirOpt = Path(".memos")) -> None:
    """Cancel a queued job."""
    with opened(data_dir) as mem:
        ok = mem.scheduler.cancel(job_id)
        console.print("cancelled" if ok else "not queued (already running or finished)")
