"""The LangGraph Platform store API (`/store/...`), backed by `MemOSStore`."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/store", tags=["store"])
