"""Configuration of one MemOS: where each store lives. Every field can come from a
`MEMOS_*` environment variable (e.g. `MEMOS_CATALOG_URL=postgresql+psycopg://...`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MemOSConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMOS_", extra="forbid")

    data_dir: Path = Field(default=Path(".memos"), description="all embedded stores live here")
    catalog_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/catalog.db"
    )
    chroma_url: str | None = Field(
        default=None, description="http(s)://host:port of a Chroma server; default embedded"
    )
    vector_server: bool = Field(
        default=False,
        description=(
            "share one Chroma server of the data dir between processes (started on demand, "
            "stopped by the last of them to close); default in-process unless it runs"
        ),
    )
    graph_url: str | None = Field(
        default=None,
        description="neo4j://, bolt:// or falkordb://host:port; default the embedded FalkorDB",
    )
    embedder: str | None = Field(
        default=None,
        description=(
            "sentence-transformers model id or path; default the packaged MiniLM "
            "(all-MiniLM-L6-v2-int8: its faster int8 twin)"
        ),
    )
    vault: str = Field(default="default", description="vault used when a call names none")
    graph_idle_timeout: float = Field(
        default=300.0, gt=0, description="seconds the embedded graph server lingers unused"
    )

    def resolved_catalog_url(self) -> str:
        return self.catalog_url or f"sqlite:///{(self.data_dir / 'catalog.db').resolve()}"
