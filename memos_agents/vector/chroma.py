"""Chroma backend: `PersistentClient` under the data dir, or `HttpClient` for a Chroma server.

An embedded dir is opened in-process unless its shared server runs (`chroma_server`): then,
or when `shared` asks for that server, every process goes through it, so all see one index.
We always pass our own embeddings; Chroma's default embedding function (which downloads a
model) is never called. One collection per (vault, user_id), named by a hash of the scope.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from ..errors import ConfigError, StoreError
from .base import VectorRecord
from .chroma_server import Attachment, answers, attach

log = logging.getLogger(__name__)
T = TypeVar("T")


def collection_name(vault: str, user_id: str) -> str:
    digest = hashlib.sha256(f"{vault}\x00{user_id}".encode()).hexdigest()[:32]
    return f"memos_{digest}"


def _settings() -> Any:
    """Fresh client settings (a client writes its host and port into the ones it is given)."""
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False, allow_reset=False)


def _http_client(url: str, settings: Any) -> Any:
    import chromadb

    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"chroma url must be http(s)://host[:port], got {url!r}")
    return chromadb.HttpClient(
        host=u.hostname,
        port=u.port or (443 if u.scheme == "https" else 8000),
        ssl=u.scheme == "https",
        settings=settings,
    )


class ChromaIndex:
    """Chroma at `url`; else the dir at `path`: through its shared server if one runs (or,
    `shared`, after starting one), else in-process, holding the dir until `close`. A call that
    finds the dir's server gone attaches to it again (restarted, for a shared user) and runs
    once more."""

    def __init__(
        self, path: Path | None = None, url: str | None = None, shared: bool = False
    ) -> None:
        import chromadb

        settings = _settings()
        self._attachment: Attachment | None = None
        try:
            if not url:
                assert path is not None
                self._attachment = attach(path, shared=shared)
                url = self._attachment.url
            if url:
                self.client: Any = _http_client(url, settings)
            else:
                assert path is not None
                self.client = chromadb.PersistentClient(path=str(path), settings=settings)
        except Exception as exc:
            if self._attachment is not None:
                self._attachment.close()
            if isinstance(exc, ConfigError | StoreError):
                raise
            raise StoreError(f"cannot open Chroma ({url or path}): {exc}") from exc
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _call(self, op: Callable[[], T]) -> T:
        """`op`; once more after reattaching if it failed because the dir's server is gone."""
        try:
            return op()
        except Exception as exc:
            att = self._attachment
            if att is None or att.url is None or answers(att.url):
                raise
            log.warning("the vector server at %s has gone (%s); reattaching", att.url, exc)
            with self._lock:
                if not answers(att.url):
                    old, self.client = self.client, _http_client(att.reconnect(), _settings())
                    self._collections.clear()
                    old.close()  # its connection pool to the server that has gone
        return op()

    def _collection(self, vault: str, user_id: str, create: bool) -> Any:
        name = collection_name(vault, user_id)
        with self._lock:
            col = self._collections.get(name)
            if col is not None:
                return col
            try:
                if create:
                    col = self.client.get_or_create_collection(
                        name,
                        embedding_function=None,
                        configuration={"hnsw": {"space": "cosine"}},
                        metadata={"vault": vault, "user_id": user_id},
                    )
                else:
                    col = self.client.get_collection(name, embedding_function=None)
            except Exception:
                if create:
                    raise
                return None
            self._collections[name] = col
            return col

    def upsert(self, vault: str, user_id: str, records: Sequence[VectorRecord]) -> None:
        if records:
            self._call(lambda: self._upsert(vault, user_id, records))

    def _upsert(self, vault: str, user_id: str, records: Sequence[VectorRecord]) -> None:
        col = self._collection(vault, user_id, create=True)
        for start in range(0, len(records), 5000):
            chunk = records[start : start + 5000]
            col.upsert(
                ids=[r.id for r in chunk],
                embeddings=[r.embedding for r in chunk],
                metadatas=[r.metadata or None for r in chunk],
            )

    def delete(self, vault: str, user_id: str, ids: Sequence[str]) -> None:
        def op() -> None:
            col = self._collection(vault, user_id, create=False)
            if col is not None and ids:
                col.delete(ids=list(ids))

        self._call(op)

    def query(
        self,
        vault: str,
        user_id: str,
        embedding: Sequence[float],
        n: int,
        where: dict[str, Any] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[tuple[str, float]]:
        return self._call(lambda: self._query(vault, user_id, embedding, n, where, ids))

    def _query(self, vault: str, user_id: str, embedding: Sequence[float], n: int,
               where: dict[str, Any] | None, ids: Sequence[str] | None
               ) -> list[tuple[str, float]]:
        col = self._collection(vault, user_id, create=False)
        if col is None or (ids is not None and not ids):
            return []
        res = col.query(
            query_embeddings=[list(embedding)],
            ids=list(ids) if ids is not None else None,
            n_results=n,
            where=where or None,
            include=["distances"],
        )
        return [(i, 1.0 - d) for i, d in zip(res["ids"][0], res["distances"][0], strict=True)]

    def embeddings(
        self, vault: str, user_id: str, ids: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Stored vectors of this scope (all, or those of `ids`), by id (numpy arrays)."""
        return self._call(lambda: self._embeddings(vault, user_id, ids))

    def _embeddings(self, vault: str, user_id: str, ids: Sequence[str] | None) -> dict[str, Any]:
        col = self._collection(vault, user_id, create=False)
        if col is None:
            return {}
        out: dict[str, Any] = {}
        if ids is not None:
            for start in range(0, len(ids), 5000):
                res = col.get(ids=list(ids[start : start + 5000]), include=["embeddings"])
                out.update(zip(res["ids"], res["embeddings"], strict=True))
            return out
        total = col.count()
        for offset in range(0, total, 5000):
            res = col.get(include=["embeddings"], limit=5000, offset=offset)
            out.update(zip(res["ids"], res["embeddings"], strict=True))
        return out

    def count(self) -> int:
        return self._call(lambda: sum(c.count() for c in self.client.list_collections()
                                      if c.name.startswith("memos_")))

    def close(self) -> None:
        """Release the client (an in-process one frees the dir for a server) and the dir."""
        self._collections.clear()
        self.client.close()
        if self._attachment is not None:
            self._attachment.close()
            self._attachment = None
