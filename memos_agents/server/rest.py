"""REST API, version 1 (`/v1/...`): memories, channels, export/import, scheduler, model.

Every route runs the facade as the principal of the request's key (`Caller.mem`), so the
library's gate decides and audits each call; errors are the app's JSON errors."""

from __future__ import annotations

from fastapi import APIRouter

from . import rest_channels, rest_memories, rest_system
from .rest_models import CallerDep

router = APIRouter(prefix="/v1")


@router.get("/whoami", tags=["auth"])
def whoami(who: CallerDep) -> dict[str, object]:
    """The principal the presented key stands for, and the vaults it is limited to."""
    return {"principal": who.principal, "key_id": who.key.id if who.key else None,
            "vaults": who.key.vaults if who.key else None}


router.include_router(rest_memories.router)
router.include_router(rest_channels.router)
router.include_router(rest_system.router)
