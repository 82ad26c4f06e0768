"""`memos-agents model ...`: the local model process and the memory forms it serves."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import DirOpt, UserOpt, VaultOpt, console, dump, err, opened

app = typer.Typer(help="The local model process: activation (KV) and parameter (LoRA) memory.")

UrlOpt = Annotated[
    str | None,
    typer.Option("--url", envvar="MEMOS_MODEL_URL", help="a running model server (ours or vLLM)"),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="MEMOS_MODEL_API_KEY",
        help="bearer token of the server at --url (ours: <its data dir>/model/token)",
        show_default=False,
    ),
]
CubesOpt = Annotated[list[str] | None, typer.Option("--cube", "-c", help="cube id (repeatable)")]


@app.command()
def serve(
    model: Annotated[
        str | None, typer.Option(help="HF model id, folder or .gguf (default: packaged SmolLM2)")
    ] = None,
    port: Annotated[int, typer.Option(help="0 picks a free port")] = 0,
    host: str = "127.0.0.1",
    threads: Annotated[int | None, typer.Option(help="torch threads (default: all cores)")] = None,
    kv_budget_mb: Annotated[int, typer.Option(help="bytes of KV caches held in memory")] = 1024,
    dtype: str = "float32",
    device: str = "cpu",
    data_dir: DirOpt = Path(".memos"),
    log_level: str = "warning",
) -> None:
    """Serve a causal LM on loopback with the OpenAI API and vLLM's LoRA endpoints, in the
    foreground. MemOS processes on the same data dir find it. Every request needs the bearer
    token written to <data dir>/model/token (mode 0600, new at each start); request paths
    must lie under <data dir>/blobs."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if model is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..model.client import TOKEN_FILE, ModelProcess, read_token, write_token
    from ..model.memory import MODEL_CACHE_ENV
    from ..model.server import serve as run

    cache = Path(os.environ.get(MODEL_CACHE_ENV) or data_dir / "models")
    state_dir = data_dir / "model"
    running = ModelProcess.find(state_dir)
    if running is not None:  # its token must stay valid for the processes using it
        err.print(f"a model process already serves {data_dir} at {running.url}", markup=False)
        raise typer.Exit(1)
    token = write_token(state_dir)
    err.print(f"bearer token in {state_dir / TOKEN_FILE}", markup=False)
    try:
        run(
            model,
            host=host,
            port=port,
            cache_dir=cache,
            dtype=dtype,
            device=device,
            threads=threads,
            kv_budget_mb=kv_budget_mb,
            state_file=state_dir / "server.json",
            log_level=log_level,
            token=token,
            blob_root=data_dir / "blobs",
        )
    finally:
        if read_token(state_dir) == token:  # a token outlives no process
            (state_dir / TOKEN_FILE).unlink(missing_ok=True)


@app.command()
def status(data_dir: DirOpt = Path(".memos"), url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """What the model process of this data dir (or at --url) serves, and its KV pool."""
    from ..model.client import ModelClient, ModelProcess

    if url is None:
        proc = ModelProcess.find(data_dir / "model")
        if proc is None:
            console.print("no model process is running for this data dir")
            raise typer.Exit(1)
        url, api_key = proc.url, proc.token
    client = ModelClient(url, api_key=api_key)
    try:
        dump({"url": client.url, **client.info(), "models": client.models()})
    finally:
        client.close()


@app.command()
def stop(data_dir: DirOpt = Path(".memos")) -> None:
    """Stop the model process of this data dir."""
    from ..model.client import ModelProcess

    proc = ModelProcess.find(data_dir / "model")
    if proc is None or not proc.stop():
        console.print("no model process was running")
    else:
        console.print(f"stopped model process {proc.pid}")


@app.command()
def build(
    user: UserOpt,
    cube: CubesOpt = None,
    name: str | None = None,
    vault: VaultOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Build activation memory (a KV cache) of these plaintext memories."""
    from ..cube import ActivationMeta

    if not cube:
        raise typer.BadParameter("give at least one --cube")
    with opened(data_dir) as mem:
        mem.model(url, api_key=api_key)
        act = mem.build_activation(cube, user_id=user, vault=vault, name=name)
        meta = ActivationMeta.from_cube(act)
        dump(
            {
                "id": act.id,
                "version": act.lifecycle.version,
                "content": act.content,
                **{k: getattr(meta, k) for k in ("tokens", "bytes", "build_s", "fingerprint")},
            }
        )


@app.command()
def distil(
    user: UserOpt,
    cube: CubesOpt = None,
    tag: str | None = None,
    name: str | None = None,
    steps: int = 30,
    lr: float = 1e-3,
    rank: int = 8,
    vault: VaultOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Distil plaintext memories (ids or a tag) into a LoRA adapter (parameter memory)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from ..cube import ParameterMeta

    with (
        opened(data_dir) as mem,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            "loss {task.fields[loss]}",
            TimeElapsedColumn(),
            console=err,
        ) as bar,
    ):
        mem.model(url, api_key=api_key)
        task = bar.add_task(f"distil {name or tag or ''}".strip(), total=steps, loss="-")

        def progress(event: dict[str, Any]) -> None:
            bar.update(task, completed=event["step"], loss=f"{event['loss']:.3f}")

        p = mem.distil(
            cube or None,
            user_id=user,
            vault=vault,
            tag=tag,
            name=name,
            steps=steps,
            lr=lr,
            rank=rank,
            progress=progress,
        )
        meta = ParameterMeta.from_cube(p)
        dump(
            {
                "id": p.id,
                "version": p.lifecycle.version,
                "content": p.content,
                **{k: getattr(meta, k) for k in ("loss_start", "loss_end", "seconds", "bytes")},
            }
        )


@app.command()
def generate(
    prompt: str,
    user: UserOpt,
    memory: Annotated[list[str] | None, typer.Option("--memory", "-m", help="plaintext id")] = None,
    activation: Annotated[str | None, typer.Option(help="activation cube id")] = None,
    parameter: Annotated[str | None, typer.Option(help="parameter cube id")] = None,
    plan: Annotated[bool | None, typer.Option(
        "--plan/--no-plan", help="--plan: print the scheduler's plan and use it; --no-plan: only "
        "the memories named (default: the plan when none are named)")] = None,
    max_tokens: int = 256,
    temperature: float = 0.0,
    vault: VaultOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DirOpt = Path(".memos"),
) -> None:
    """Answer PROMPT with the local model and the memories given (streamed)."""
    with opened(data_dir) as mem:
        mem.model(url, api_key=api_key)
        the_plan = mem.scheduler.plan(prompt, user_id=user, vault=vault) if plan else None
        if the_plan is not None:
            err.print(the_plan.explain(), markup=False)
        out = mem.generate(
            prompt,
            user_id=user,
            vault=vault,
            memories=memory,
            activation=activation,
            parameter=parameter,
            plan=the_plan if plan else (False if plan is False else None),
            max_tokens=max_tokens,
            temperature=temperature,
            on_token=lambda t: console.print(t, end="", markup=False, highlight=False),
        )
        console.print()
        err.print(
            json.dumps(
                {"ttft_s": out.ttft_s, "cached_tokens": out.cached_tokens, "usage": out.usage}
            )
        )
