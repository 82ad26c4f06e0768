"""The ASGI app: one `MemOS`, its gate, the key check, JSON errors, and the routers.

Errors are JSON `{"error": <MemOSError class name>, "message": ...}` with a status that says
what went wrong (400 bad input, 401 no key, 403 refused, 404 missing, 409 conflict, 413 too
large, 422 a malformed request); never a stack trace.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    Conflict,
    ExtractionError,
    IntegrityError,
    InvalidInput,
    MemOSError,
    NotFound,
    ScopeViolation,
    StoreError,
)
from ..governance import PermissionDenied
from ..keys import KeyStore
from ..model.client import ModelUnavailable
from . import mcp, rest, store_api
from .auth import Authenticator, Unauthenticated

if TYPE_CHECKING:
    from ..mos import MemOS

log = logging.getLogger("memos_agents.server")

MAX_BODY = 16 * 1024 * 1024  # bytes a request body may hold (413 above it)

STATUS: tuple[tuple[type[Exception], int], ...] = (
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (ScopeViolation, 403),
    (NotFound, 404),
    (Conflict, 409),
    (IntegrityError, 409),
    (ExtractionError, 422),
    (InvalidInput, 400),
    (StoreError, 503),
    (ModelUnavailable, 503),
)


def status_of(exc: Exception) -> int:
    return next((code for kind, code in STATUS if isinstance(exc, kind)), 400)


def error(name: str, message: str, status: int) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": name, "message": message}, status_code=status, headers=headers)


class BodyTooLarge(MemOSError):
    """The request body is larger than the server takes (HTTP 413)."""


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(MemOSError)
    async def memos_error(_: Request, exc: MemOSError) -> JSONResponse:
        return error(type(exc).__name__, str(exc), status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                 for e in exc.errors()]
        return error("InvalidInput", "; ".join(parts) or "invalid request", 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error("HTTPError", str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error("InternalError", "internal server error", 500)

    @app.middleware("http")
    async def body_limit(request: Request, call_next: Any) -> Any:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > app.state.max_body:
            return error(BodyTooLarge.__name__,
                         f"request body over {app.state.max_body} bytes", 413)
        return await call_next(request)


def create_app(
    mem: MemOS, *, auth: bool | None = None, max_body: int = MAX_BODY, close: bool = False
) -> FastAPI:
    """The server app over `mem` (a system view). `auth`: None requires a key once any key
    exists (open mode before: loopback only, see `memos-agents serve`), True always.
    `close`: close `mem` when the app shuts down."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        async with app.state.mcp.run():
            yield
        if close:
            mem.close()

    app = FastAPI(title="memos-agents", version="1", lifespan=lifespan,
                  summary="Memory for LLM agents: REST, the LangGraph store API and MCP.")
    app.state.mem = mem
    app.state.keys = KeyStore(mem.vault.catalog.engine)
    app.state.auth = Authenticator(mem, app.state.keys, required=auth)
    app.state.max_body = max_body
    _handlers(app)
    app.include_router(rest.router)
    app.include_router(store_api.router)
    app.state.mcp = mcp.mount(app, app.state.auth)
    return app


def app_from_env() -> FastAPI:
    """The app `memos-agents serve` runs in each uvicorn worker: the data dir and the auth
    switch come from MEMOS_DIR and MEMOS_SERVER_AUTH ("required" or "auto")."""
    from ..mos import MemOS

    data_dir = Path(os.environ.get("MEMOS_DIR", ".memos"))
    sched = os.environ.get("MEMOS_SCHEDULER", "1")
    mem = MemOS.open(data_dir, scheduler=sched not in ("0", "false", "off", ""))
    required = True if os.environ.get("MEMOS_SERVER_AUTH") == "required" else None
    return create_app(mem, auth=required, close=True)
