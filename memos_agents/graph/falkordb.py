"""`FalkorGraphStore`: the graph on FalkorDB, embedded (one server per graph dir) or remote."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..errors import InvalidInput, StoreError
from .cypher import CypherGraphStore, Rows, Run, T
from .falkordb_server import ensure_server

if TYPE_CHECKING:
    from falkordb import FalkorDB

INDEXES = (
    "CREATE INDEX FOR (n:Fact) ON (n.id)",
    "CREATE INDEX FOR (n:Entity) ON (n.key)",
    "CREATE INDEX FOR (n:Source) ON (n.key)",
    "CREATE INDEX FOR (n:Concept) ON (n.key)",
    "CREATE INDEX FOR (n:Topic) ON (n.key)",
)
# FalkorDB's indegree() is ~10x faster than a NOT (pattern) check here
DROP_ORPHAN_ENTITIES = """
UNWIND $keys AS k
MATCH (e:Entity {key: k})
WHERE indegree(e, 'MENTIONS') = 0
DELETE e
"""
DROP_ORPHAN_SOURCES = """
UNWIND $keys AS k
MATCH (s:Source {key: k})
WHERE indegree(s, 'FROM') = 0
DELETE s
"""
DROP_ORPHAN_CONCEPTS = """
UNWIND $keys AS k
MATCH (c:Concept {key: k})
WHERE indegree(c, 'ABOUT') = 0
DETACH DELETE c
"""
_SOCKET_TIMEOUT = 120.0
_URL_SCHEMES = {"falkordb": "redis", "falkor": "redis", "falkors": "rediss"}


def _redacted(url: str) -> str:
    """`url` without credentials, for messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _check_params(value: Any) -> None:
    """Reject what the client's inlined `CYPHER k=v` header cannot carry."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput("FalkorDB cannot store strings containing NUL (\\x00) characters")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"FalkorDB cannot store the number {value!r}")
    elif isinstance(value, dict):
        for v in value.values():
            _check_params(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _check_params(v)


class FalkorGraphStore(CypherGraphStore):
    """A `GraphStore` on FalkorDB.

    With `graph_dir`, it talks to the embedded server of that dir over a Unix
    socket, starting it if needed (it stops itself after `idle_timeout` s with
    no client). With `url` (``redis://``, ``rediss://``, ``falkordb://host:port``)
    it uses a server that runs elsewhere.
    """

    drop_orphan_entities = DROP_ORPHAN_ENTITIES
    drop_orphan_sources = DROP_ORPHAN_SOURCES
    drop_orphan_concepts = DROP_ORPHAN_CONCEPTS

    def __init__(
        self,
        graph_dir: Path | None = None,
        graph_name: str = "memos",
        idle_timeout: float = 300.0,
        *,
        url: str | None = None,
    ) -> None:
        if (graph_dir is None) == (url is None):
            raise InvalidInput("give FalkorGraphStore either graph_dir or url")
        self._graph_dir = None if graph_dir is None else Path(graph_dir)
        self._idle_timeout = idle_timeout
        self._url = url
        self._where = str(graph_dir) if url is None else _redacted(url)
        self._db = self._call(self._connect)
        self._graph = self._db.select_graph(graph_name)
        for ddl in INDEXES:
            self._call(lambda ddl=ddl: self._create_index(ddl))

    def _connect(self) -> FalkorDB:
        from falkordb import FalkorDB

        timeouts = {"socket_timeout": _SOCKET_TIMEOUT, "socket_connect_timeout": 10.0}
        if self._graph_dir is not None:
            sock = ensure_server(self._graph_dir, self._idle_timeout)
            return FalkorDB(unix_socket_path=sock, **timeouts)
        assert self._url is not None
        scheme, sep, rest = self._url.partition("://")
        url = f"{_URL_SCHEMES.get(scheme.lower(), scheme)}{sep}{rest}"
        return FalkorDB.from_url(url, retry=None, **timeouts)

    def _create_index(self, ddl: str) -> None:
        from redis.exceptions import ResponseError

        try:
            self._graph.query(ddl)
        except ResponseError as exc:
            if "already indexed" not in str(exc):
                raise

    def _reconnect(self, _state: object) -> None:
        if self._graph_dir is not None:  # restart the embedded server if it is gone
            ensure_server(self._graph_dir, self._idle_timeout)

    def _call(self, fn: Callable[[], T]) -> T:
        """Call `fn`, retrying on a lost connection; client errors become `StoreError`."""
        from redis.exceptions import ConnectionError, RedisError

        retrying = Retrying(
            retry=retry_if_exception_type(ConnectionError),
            stop=stop_after_attempt(4),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            before_sleep=self._reconnect,
            reraise=True,
        )
        try:
            return retrying(fn)
        except UnicodeError as exc:
            raise InvalidInput(f"text the graph cannot encode: {exc}") from exc
        except RedisError as exc:
            raise StoreError(f"FalkorDB ({self._where}) failed: {exc}") from exc

    def _query(self, query: str, params: dict[str, Any], read_only: bool) -> Rows:
        _check_params(params)
        send = self._graph.ro_query if read_only else self._graph.query
        return self._call(lambda: send(query, params or None).result_set)

    def _read(self, query: str, params: dict[str, Any]) -> Rows:
        return self._query(query, params, read_only=True)

    def _write(self, work: Callable[[Run], T]) -> T:
        return work(lambda query, params: self._query(query, params, read_only=False))

    def close(self) -> None:
        """Close this client's connections (the embedded server stops itself when idle)."""
        self._db.connection.close()
        self._db.connection.connection_pool.disconnect()
