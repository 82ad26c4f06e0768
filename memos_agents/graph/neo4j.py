"""`Neo4jGraphStore`: the graph on a Neo4j 5 server, through the official `neo4j` driver."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, StoreError
from .cypher import CypherGraphStore, Rows, Run, T

if TYPE_CHECKING:
    from neo4j import ManagedTransaction

CONSTRAINTS = (
    "CREATE CONSTRAINT fact_id IF NOT EXISTS FOR (n:Fact) REQUIRE n.id IS UNIQUE",
    "CREATE CONSTRAINT entity_key IF NOT EXISTS FOR (n:Entity) REQUIRE n.key IS UNIQUE",
    "CREATE CONSTRAINT source_key IF NOT EXISTS FOR (n:Source) REQUIRE n.key IS UNIQUE",
    "CREATE CONSTRAINT concept_key IF NOT EXISTS FOR (n:Concept) REQUIRE n.key IS UNIQUE",
    "CREATE CONSTRAINT topic_key IF NOT EXISTS FOR (n:Topic) REQUIRE n.key IS UNIQUE",
)


class Neo4jGraphStore(CypherGraphStore):
    """A `GraphStore` on Neo4j 5.

    `user` / `password` default to the NEO4J_USER / NEO4J_PASSWORD environment
    variables (no auth if neither a password nor NEO4J_PASSWORD is set), and
    `database` to NEO4J_DATABASE, else the server's default database. Each
    batch of writes runs in one transaction, which the driver retries on
    transient errors.
    """

    def __init__(
        self,
        uri: str,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
    ) -> None:
        import neo4j

        user = user if user is not None else os.environ.get("NEO4J_USER")
        password = password if password is not None else os.environ.get("NEO4J_PASSWORD")
        auth = (user or "neo4j", password) if password is not None else None
        self._database = database or os.environ.get("NEO4J_DATABASE") or None
        self._uri = uri
        try:
            self._driver = neo4j.GraphDatabase.driver(uri, auth=auth)
        except (ValueError, neo4j.exceptions.ConfigurationError) as exc:
            raise ConfigError(f"cannot use the Neo4j URI {uri!r}: {exc}") from exc
        try:
            self._call(self._driver.verify_connectivity)
            for ddl in CONSTRAINTS:
                self._call(
                    lambda ddl=ddl: self._driver.execute_query(ddl, database_=self._database)
                )
        except StoreError:
            self._driver.close()
            raise

    def _call(self, fn: Callable[[], T]) -> T:
        """Call `fn`; driver and server errors become `StoreError`."""
        from neo4j.exceptions import DriverError, Neo4jError

        try:
            return fn()
        except (DriverError, Neo4jError) as exc:
            raise StoreError(f"Neo4j ({self._uri}) failed: {exc}") from exc

    def _read(self, query: str, params: dict[str, Any]) -> Rows:
        from neo4j import RoutingControl

        result = self._call(
            lambda: self._driver.execute_query(
                query, params, routing_=RoutingControl.READ, database_=self._database
            )
        )
        return [list(record.values()) for record in result.records]

    def _write(self, work: Callable[[Run], T]) -> T:
        def unit(tx: ManagedTransaction) -> T:
            return work(lambda query, params: [list(r.values()) for r in tx.run(query, params)])

        def in_session() -> T:
            # share execute_query's bookmarks, so later reads see these writes in a cluster
            with self._driver.session(
                database=self._database,
                bookmark_manager=self._driver.execute_query_bookmark_manager,
            ) as session:
                return session.execute_write(unit)

        return self._call(in_session)

    def close(self) -> None:
        """Close the driver and its connections."""
        self._driver.close()
