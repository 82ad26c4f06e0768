"""REST: MIP export / import, the scheduler's status, and generation with the local model."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.encoders import jsonable_encoder

from ..loader import MIPDocument, parse_mip
from .rest_models import CallerDep, Generate, Generated, Imported

router = APIRouter()

MipBody = Annotated[dict[str, Any], Body(description="a MIP document, as GET /v1/export gives")]


@router.get("/export", tags=["mip"])
def export(
    who: CallerDep,
    user_id: Annotated[str | None, Query(description="default: the key's own user")] = None,
    vault: str | None = None,
    include_deleted: bool = False,
) -> MIPDocument:
    """The memories of one vault this key may read (of `user_id`, for a user key its own by
    default), with their versions and blobs, as a MIP document."""
    vault = who.vault(vault)
    return who.mem.export(vault=vault, user_id=who.own_user(user_id, vault, "export"),
                          include_deleted=include_deleted)


@router.post("/import", tags=["mip"], status_code=201)
def import_mip(
    document: MipBody,
    who: CallerDep,
    user_id: Annotated[str | None, Query(description="default: the key's own user")] = None,
    vault: str | None = None,
) -> Imported:
    """Import a MIP document into one vault (and `user_id`'s memory): the whole file is checked,
    and the key's right to write there, before anything is written."""
    doc = parse_mip(document, "the request body")
    vault = who.vault(vault)
    cubes = who.mem.import_file(doc, vault=vault, user_id=who.own_user(user_id, vault, "import"))
    return Imported(items=cubes, count=len(cubes))


@router.get("/scheduler/status", tags=["scheduler"])
def scheduler_status(who: CallerDep, limit: int = 20) -> dict[str, Any]:
    """What `memos-agents scheduler status --json` shows: workers, budgets, hot KV caches and
    the latest decisions (the scheduler is the system's: other keys are refused)."""
    return jsonable_encoder(who.mem.scheduler.status(limit=limit))


@router.post("/model/generate", tags=["model"])
def generate(body: Generate, who: CallerDep) -> Generated:
    """Answer with the local model and the memories the scheduler plans for the prompt (or
    none, `plan: false`). 503 ModelUnavailable when no model process runs for this server."""
    vault = who.vault(body.vault)
    user = who.scope_user(body.user_id, vault, "generate")
    who.mem.model(start=False)  # never starts a model process on a request
    prompt = (body.prompt if isinstance(body.prompt, str)
              else [m.model_dump(exclude_none=True) for m in body.prompt])
    kw: dict[str, Any] = {"vault": vault}
    if body.max_new_tokens is not None:
        kw["max_tokens"] = body.max_new_tokens
    if not body.plan:
        kw["plan"] = False
    out = who.mem.generate(prompt, user_id=user, **kw)
    return Generated(**asdict(out), cached_tokens=out.cached_tokens)
