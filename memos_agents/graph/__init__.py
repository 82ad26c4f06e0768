"""The topic-concept-fact graph: the `GraphStore` protocol and its backends.

`import memos_agents.graph` stays cheap (the graph server's supervisor process
imports it): every name but `open_graph` loads on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import lazy_loader as lazy

from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import ConceptLink, FactNode, GraphStore, TopicNode, norm_entity, scoped_key
    from .falkordb import FalkorGraphStore
    from .falkordb_server import ensure_server, server_status, stop_server
    from .neo4j import Neo4jGraphStore

__getattr__, _, _lazy_all = lazy.attach(
    __name__,
    submod_attrs={
        "base": ["FactNode", "TopicNode", "ConceptLink", "GraphStore", "norm_entity", "scoped_key"],
        "falkordb": ["FalkorGraphStore"],
        "neo4j": ["Neo4jGraphStore"],
        "falkordb_server": ["ensure_server", "server_status", "stop_server"],
    },
)

__all__ = ["open_graph", *_lazy_all]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


NEO4J_SCHEMES = {"neo4j", "neo4j+s", "neo4j+ssc", "bolt", "bolt+s", "bolt+ssc"}
FALKORDB_SCHEMES = {"falkordb", "falkor", "falkors", "redis", "rediss"}


def open_graph(url: str | None, data_dir: Path, idle_timeout: float = 300.0) -> GraphStore:
    """Open the graph named by `url`.

    None or ``falkordb://embedded``: the embedded FalkorDB server of
    `data_dir`/graph. ``neo4j://``, ``neo4j+s://``, ``bolt://``, ``bolt+s://``:
    Neo4j 5 (credentials from NEO4J_USER / NEO4J_PASSWORD). ``falkordb://host:port``
    or ``redis://host:port``: a FalkorDB server that runs elsewhere.
    """
    if url is None or url == "falkordb://embedded":
        from .falkordb import FalkorGraphStore

        return FalkorGraphStore(Path(data_dir) / "graph", idle_timeout=idle_timeout)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in NEO4J_SCHEMES:
        from .neo4j import Neo4jGraphStore

        return Neo4jGraphStore(url)
    if scheme in FALKORDB_SCHEMES:
        from .falkordb import FalkorGraphStore

        return FalkorGraphStore(url=url)
    raise ConfigError(
        f"unsupported graph URL scheme {scheme or '(none)'!r}: use falkordb://embedded, "
        "falkordb://host:port, redis://host:port, neo4j://, neo4j+s://, bolt:// or bolt+s://"
    )
