"""The model process: an OpenAI-compatible HTTP server on loopback over one `Engine`.

Standard endpoints (the subset of the OpenAI API and vLLM's LoRA endpoints that MemOS uses, so
the same client works against a vLLM server):

- `GET  /v1/models`
- `POST /v1/chat/completions` (`stream: true` answers server-sent events;
  `response_format: {"type": "json_schema", "json_schema": {"schema": ...}}` or
  `{"type": "json_object"}` constrains the reply to JSON, as OpenAI and vLLM do)
- `POST /v1/load_lora_adapter` `{"lora_name", "lora_path"}`, `POST /v1/unload_lora_adapter`;
  a request picks an adapter by naming it in `model`.

MemOS extensions (a vLLM server has none of them; MemOS then sends memories as text and relies
on vLLM's prefix caching):

- `GET  /health`, `GET /v1/memos/info` (model identity the fingerprints depend on)
- `POST /v1/memos/activation/build`, `POST /v1/memos/activation/evict`
- `memos_activation: {"blob", "fingerprint"}` in a chat completion request
- `POST /v1/memos/score` (mean NLL of texts), `POST /v1/memos/distil` (LoRA training, NDJSON
  progress), `POST /v1/memos/shutdown`

Run it with `memos-agents model serve` or `python -m memos_agents.model.server`.

Trust boundary: every request but `GET /health` needs `Authorization: Bearer <token>` (401
otherwise). A process MemOS starts gets a fresh random token in `MEMOS_MODEL_TOKEN` (never in
argv) and keeps it in `<state dir>/token` (mode 0600); `memos-agents model serve` writes one
there too. Started by hand, the server refuses to start without `MEMOS_MODEL_TOKEN` unless
`--no-auth` is given (loopback only). Every path a request names (`lora_path`, the KV `path`
and `memos_activation.blob`, the distil `path`) must resolve inside the blob root
(`--blob-root`, `<data dir>/blobs`; a relative path is taken relative to it), else 400 and
nothing is read or written; without a blob root those requests are refused.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads must not spin

import argparse
import asyncio
import hmac
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from ..errors import ConfigError
from ..localhost import is_loopback
from .protocol import RequestError

log = logging.getLogger("memos_agents.model.server")

TOKEN_ENV = "MEMOS_MODEL_TOKEN"  # the bearer token a started process gets (never argv)
OPEN_PATHS = frozenset({"/health"})  # answered without a token: {"status": "ok"}, nothing else


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Any:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": kind, "code": status}},
    )


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError(400, "messages must be a non-empty list")
    out = []
    for m in msgs:
        if not isinstance(m, dict) or "role" not in m:
            raise RequestError(400, "each message needs a role")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        out.append({"role": str(m["role"]), "content": "" if content is None else str(content)})
    return out


def json_schema_of(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema an OpenAI `response_format` asks the reply to fit (None: free text)."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            return schema
        raise RequestError(400, "response_format.json_schema.schema must be a JSON schema object")
    raise RequestError(400, "response_format.type must be text, json_object or json_schema")


async def _refused(_req: Request, exc: Exception) -> Any:
    assert isinstance(exc, RequestError)
    return _error(exc.status, exc.message, exc.kind)


def _bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (None for anything else)."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def token_ok(header: str | None, token: str) -> bool:
    """Whether `header` carries exactly `token` (compared in constant time)."""
    given = _bearer(header)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _guard(token: str) -> Any:
    """HTTP middleware: 401 for a request without the bearer token (except `OPEN_PATHS`)."""

    async def guard(request: Request, call_next: Any) -> Any:
        if request.url.path in OPEN_PATHS or token_ok(request.headers.get("authorization"), token):
            return await call_next(request)
        resp = _error(
            401,
            "missing or wrong bearer token: send Authorization: Bearer <token> (the token of a "
            "process MemOS started is in <data dir>/model/token)",
            "authentication_error",
        )
        resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    return guard


def confined(root: Path | None, path: object, what: str) -> str:
    """`path` resolved (symlinks followed) if it lies inside the blob root `root`, else a 400
    RequestError: nothing outside the root is ever read or written. A relative path is taken
    relative to the root."""
    if root is None:
        raise RequestError(
            400,
            f"{what}: this model process has no blob root (--blob-root); it reads and "
            "writes no files",
        )
    if not isinstance(path, str) or not path:
        raise RequestError(400, f"{what} must be a non-empty string")
    try:
        resolved = (root / path).resolve()  # an absolute `path` replaces the root
    except (OSError, ValueError) as exc:
        raise RequestError(400, f"{what} {path!r} is not a usable path: {exc}") from exc
    if resolved == root or not resolved.is_relative_to(root):
        raise RequestError(400, f"{what} {path!r} resolves outside the blob root {root}")
    return str(resolved)


def _job(engine: Any, fn: Any, arg: Any, cancel: threading.Event) -> asyncio.Queue[Any]:
    """Run `fn(arg, emit, cancel)` on the engine's worker; the queue gets every emitted event
    (a dict), then the finished future."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def emit(event: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    future = engine.submit(fn, arg, emit, cancel)
    future.add_done_callback(lambda f: loop.call_soon_threadsafe(queue.put_nowait, f))
    return queue


def _failure(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, RequestError):
        return exc.status, exc.message
    return 500, repr(exc)


def _chunk(
    head: dict[str, Any], delta: dict[str, Any], finish: str | None = None, **extra: Any
) -> str:
    payload = {
        **head,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _last_events(done: Any, head: dict[str, Any], include_usage: bool) -> list[str]:
    """The events after the text: the error, or the finish reason (and the usage)."""
    exc = done.exception()
    if exc is not None:
        return [f"data: {json.dumps({'error': {'message': _failure(exc)[1]}})}\n\n"]
    result = done.result()
    out = [_chunk(head, {}, result["finish_reason"], memos={"timings": result["timings"]})]
    if include_usage:
        payload = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": result["usage"],
        }
        out.append(f"data: {json.dumps(payload)}\n\n")
    return out


async def _sse(
    item: Any,
    queue: asyncio.Queue[Any],
    head: dict[str, Any],
    include_usage: bool,
    cancel: threading.Event,
) -> AsyncIterator[str]:
    """A streamed chat completion as server-sent events, from the first item of `queue` on."""
    try:
        yield _chunk(head, {"role": "assistant", "content": ""})
        while isinstance(item, dict):
            yield _chunk(head, {"content": item["delta"]})
            item = await queue.get()
        for event in _last_events(item, head, include_usage):
            yield event
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()


async def _ndjson(queue: asyncio.Queue[Any], cancel: threading.Event) -> AsyncIterator[str]:
    """Distillation progress lines, then the result or the error."""
    try:
        while isinstance(item := await queue.get(), dict):
            yield json.dumps({"progress": item}) + "\n"
        exc = item.exception()
        if exc is not None:
            status, msg = _failure(exc)
            yield json.dumps({"error": {"message": msg, "code": status}}) + "\n"
        else:
            yield json.dumps({"result": item.result()}) + "\n"
    finally:
        cancel.set()


class _Routes:
    """The HTTP handlers over one engine."""

    def __init__(self, engine: Any, on_shutdown: Any = None, blob_root: Path | None = None) -> None:
        self.engine = engine
        self.served = engine.source.name
        self.on_shutdown = on_shutdown
        self.blob_root = blob_root

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.wrap_future(self.engine.submit(fn, *args))

    def adapter_of(self, body: dict[str, Any]) -> str | None:
        """The adapter a request names in `model` (None: the base model)."""
        model = body.get("model") or self.served
        return None if model == self.served else str(model)

    async def health(self) -> dict[str, Any]:
        return {"status": "ok"}  # answered without a token: says nothing else

    async def info(self) -> dict[str, Any]:
        return self.engine.info()

    async def models(self) -> dict[str, Any]:
        created = int(self.engine.started_at)
        data = [
            {
                "id": self.served,
                "object": "model",
                "created": created,
                "owned_by": "memos-agents",
                "root": self.engine.source.load_path,
                "parent": None,
                "max_model_len": self.engine.max_context,
            }
        ]
        data += [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "memos-agents",
                "root": a["path"],
                "parent": self.served,
            }
            for name, a in sorted(self.engine.adapters.items())
        ]
        return {"object": "list", "data": data}

    def gen_request(self, body: dict[str, Any]) -> Any:
        from .engine import GenRequest

        if int(body.get("n") or 1) != 1:
            raise RequestError(400, "only n=1 is supported")
        stop = body.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError(400, "max_tokens must be a positive integer")
        temperature = body.get("temperature")
        activation = body.get("memos_activation")
        if isinstance(activation, dict) and "blob" in activation:
            blob = confined(self.blob_root, activation["blob"], "memos_activation.blob")
            activation = {**activation, "blob": blob}
        return GenRequest(
            messages=_messages(body),
            max_tokens=max_tokens,
            temperature=1.0 if temperature is None else float(temperature),
            top_p=float(body.get("top_p") if body.get("top_p") is not None else 1.0),
            seed=body.get("seed"),
            stop=[str(s) for s in stop],
            adapter=self.adapter_of(body),
            activation=activation,
            json_schema=json_schema_of(body.get("response_format")),
        )

    async def chat(self, request: Request) -> Any:
        body = await request.json()
        req = self.gen_request(body)
        if req.adapter is not None and req.adapter not in self.engine.adapters:
            raise RequestError(404, f"The model `{req.adapter}` does not exist.", "NotFoundError")
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": body.get("model") or self.served,
        }
        cancel = threading.Event()
        if not body.get("stream"):
            result = await self.run(self.engine.generate, req, lambda _e: None, cancel)
            return {
                "id": head["id"],
                "object": "chat.completion",
                "created": head["created"],
                "model": head["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result["text"]},
                        "finish_reason": result["finish_reason"],
                    }
                ],
                "usage": result["usage"],
                "memos": {"timings": result["timings"]},
            }
        queue = _job(self.engine, self.engine.generate, req, cancel)
        # fail before streaming starts when the request is refused (unknown blob, bad adapter)
        first = await queue.get()
        if not isinstance(first, dict) and first.exception() is not None:
            exc = first.exception()
            if isinstance(exc, RequestError):
                return _error(exc.status, exc.message, exc.kind)
            raise exc
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            _sse(first, queue, head, include_usage, cancel), media_type="text/event-stream"
        )

    async def load_lora(self, request: Request) -> Any:
        body = await request.json()
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise RequestError(400, "lora_name and lora_path are required")
        path = confined(self.blob_root, path, "lora_path")
        await self.run(self.engine.load_adapter, name, path)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora(self, request: Request) -> Any:
        body = await request.json()
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            raise RequestError(400, "lora_name is required")
        await self.run(self.engine.unload_adapter, name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def build(self, request: Request) -> Any:
        body = await request.json()
        fp, path = body.get("fingerprint"), body.get("path")
        if not isinstance(fp, str) or not isinstance(path, str):
            raise RequestError(400, "fingerprint and path are required")
        path = confined(self.blob_root, path, "path")
        return await self.run(
            self.engine.build_kv,
            _messages(body),
            fp,
            path,
            self.adapter_of(body),
            body.get("meta") or {},
        )

    async def evict(self, request: Request) -> Any:
        body = await request.json()
        return {"evicted": self.engine.pool.evict(body.get("fingerprint"))}

    async def score(self, request: Request) -> Any:
        body = await request.json()
        items = body.get("items")
        if not isinstance(items, list) or not items:
            raise RequestError(400, "items must be a non-empty list")
        return {"scores": await self.run(self.engine.score, items, self.adapter_of(body))}

    async def distil(self, request: Request) -> Any:
        body = await request.json()
        if not isinstance(body.get("name"), str) or not isinstance(body.get("path"), str):
            raise RequestError(400, "name and path are required")
        body = {**body, "path": confined(self.blob_root, body["path"], "path")}
        cancel = threading.Event()
        queue = _job(self.engine, self.engine.distil, body, cancel)
        return StreamingResponse(_ndjson(queue, cancel), media_type="application/x-ndjson")

    async def shutdown(self) -> dict[str, Any]:
        if self.on_shutdown is not None:
            asyncio.get_running_loop().call_later(0.05, self.on_shutdown)
        return {"status": "stopping"}


def create_app(
    engine: Any,
    on_shutdown: Any = None,
    on_ready: Any = None,
    *,
    token: str | None,
    blob_root: Path | None = None,
) -> Any:
    """The app over `engine`. `token`: the bearer token every request but `/health` needs
    (None: no authentication, only for a server started by hand with `--no-auth`);
    `blob_root`: the folder every path in a request must resolve inside (None: requests that
    name a path are refused)."""
    if token is not None and not token:
        raise ConfigError("the model process token is empty")

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        if on_ready is not None:
            on_ready()
        yield

    app = FastAPI(title="memos-agents model process", version="1", lifespan=lifespan)
    app.add_exception_handler(RequestError, _refused)
    if token is not None:
        app.middleware("http")(_guard(token))
    root = Path(blob_root).resolve() if blob_root is not None else None
    routes = _Routes(engine, on_shutdown, root)
    for method, path, handler in (
        ("GET", "/health", routes.health),
        ("GET", "/v1/memos/info", routes.info),
        ("GET", "/v1/models", routes.models),
        ("POST", "/v1/chat/completions", routes.chat),
        ("POST", "/v1/load_lora_adapter", routes.load_lora),
        ("POST", "/v1/unload_lora_adapter", routes.unload_lora),
        ("POST", "/v1/memos/activation/build", routes.build),
        ("POST", "/v1/memos/activation/evict", routes.evict),
        ("POST", "/v1/memos/score", routes.score),
        ("POST", "/v1/memos/distil", routes.distil),
        ("POST", "/v1/memos/shutdown", routes.shutdown),
    ):
        app.add_api_route(path, handler, methods=[method])
    return app


def _parent_watch(parent: int, stop: Any) -> None:
    """Stop when the process that started us is gone (its children are re-parented)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            log.warning("parent process %d is gone; stopping", parent)
            stop()
            return


def serve(
    model: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    cache_dir: Path,
    dtype: str = "float32",
    device: str = "cpu",
    threads: int | None = None,
    kv_budget_mb: int = 1024,
    ready_file: Path | None = None,
    state_file: Path | None = None,
    parent_pid: int | None = None,
    log_level: str = "warning",
    token: str | None,
    blob_root: Path | None = None,
) -> None:
    """Load the model, bind, write `ready_file` ({"url", "pid", ...}) and serve until stopped.
    `state_file` (`<data dir>/model/server.json`) is how MemOS processes find this one.
    `token`: the bearer token every request needs (None only for `--no-auth`); `blob_root`:
    where every path a request names must lie (see `create_app`)."""
    _check_serving(host, token, blob_root)
    import torch
    import transformers
    import uvicorn

    transformers.logging.disable_progress_bar()

    from . import runtime
    from .engine import Engine

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    source = runtime.resolve(model, cache_dir)
    tok, lm = runtime.load(source, dtype=dtype, device=device)
    engine = Engine(source, tok, lm, dtype=dtype, device=device, kv_budget_bytes=kv_budget_mb << 20)
    load_s = time.perf_counter() - started

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    url = f"http://{host}:{bound}"

    holder: list[Any] = []

    def stop() -> None:
        if holder:
            holder[0].should_exit = True

    def ready() -> None:
        info = {
            "url": url,
            "pid": os.getpid(),
            "model": source.name,
            "revision": source.revision,
            "load_s": round(load_s, 2),
            "converted": bool(source.extra.get("converted")),
        }
        for target in (ready_file, state_file):
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + f".tmp{os.getpid()}")
                tmp.write_text(json.dumps({**info, "started_at": time.time()}))
                os.replace(tmp, target)
        print(f"memos-agents model process serving {source.name} at {url}", flush=True)

    app = create_app(engine, on_shutdown=stop, on_ready=ready, token=token, blob_root=blob_root)
    config = uvicorn.Config(
        app, host=host, port=bound, log_level=log_level, timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    holder.append(server)
    if parent_pid:
        threading.Thread(target=_parent_watch, args=(parent_pid, stop), daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        engine.close()
        if state_file is not None:
            try:
                if json.loads(state_file.read_text()).get("pid") == os.getpid():
                    state_file.unlink()
            except (OSError, ValueError):
                pass


def _check_serving(host: str, token: str | None, blob_root: Path | None) -> None:
    """Refuse to serve without a token off loopback; make the blob root."""
    if token is None and not is_loopback(host):
        raise ConfigError(f"refusing to serve without a token on {host} (not loopback)")
    if blob_root is not None:
        Path(blob_root).mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> None:
    """`python -m memos_agents.model.server`: the token comes from `MEMOS_MODEL_TOKEN` (removed
    from the environment once read); without one it refuses to start unless `--no-auth`."""
    p = argparse.ArgumentParser(
        prog="python -m memos_agents.model.server",
        epilog=f"Every request needs Authorization: Bearer ${TOKEN_ENV}.",
    )
    p.add_argument("--model", default=None, help="model id, folder or .gguf (default: SmolLM2)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, required=True)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--kv-budget-mb", type=int, default=1024)
    p.add_argument("--ready-file", type=Path, default=None)
    p.add_argument("--state-file", type=Path, default=None)
    p.add_argument("--parent-pid", type=int, default=None)
    p.add_argument("--log-level", default="warning")
    p.add_argument(
        "--blob-root",
        type=Path,
        default=None,
        help="the only folder request paths may name (KV blobs, adapters); without it, "
        "requests that name a path are refused",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help=f"serve without a token (loopback only; default: refuse to start without {TOKEN_ENV})",
    )
    a = p.parse_args(argv)
    token = os.environ.pop(TOKEN_ENV, None) or None
    if token is None and not a.no_auth:
        p.error(f"no token: set {TOKEN_ENV} (a random secret), or pass --no-auth explicitly")
    if token is not None and a.no_auth:
        p.error(f"--no-auth with {TOKEN_ENV} set: choose one")
    if a.no_auth and not is_loopback(a.host):
        p.error(f"--no-auth is refused on a host that is not loopback ({a.host})")
    logging.basicConfig(level=a.log_level.upper(), stream=sys.stderr)
    serve(
        a.model,
        host=a.host,
        port=a.port,
        cache_dir=a.cache_dir,
        dtype=a.dtype,
        device=a.device,
        threads=a.threads,
        kv_budget_mb=a.kv_budget_mb,
        ready_file=a.ready_file,
        state_file=a.state_file,
        parent_pid=a.parent_pid,
        log_level=a.log_level,
        token=token,
        blob_root=a.blob_root,
    )


if __name__ == "__main__":
    main()
