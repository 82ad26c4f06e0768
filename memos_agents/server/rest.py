"""REST API, version 1 (`/v1/...`): memories, channels, export/import, scheduler, model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from .auth import Caller, caller

router = APIRouter(prefix="/v1")

CallerDep = Annotated[Caller, Depends(caller)]


@router.get("/whoami", tags=["auth"])
def whoami(who: CallerDep) -> dict[str, object]:
    """The principal the presented key stands for, and the vaults it is limited to."""
    return {"principal": who.principal, "key_id": who.key.id if who.key else None,
            "vaults": who.key.vaults if who.key else None}
