from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the packaged model is converted once per run, not once per data dir (cookbook subprocesses too)
os.environ.setdefault(
    "MEMOS_MODEL_CACHE", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "memos-models")
)

PG_URL = os.environ.get("MEMOS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def embedder():
    """The real packaged MiniLM (the default ONNX embedder), loaded once for the whole run."""
    from memos_agents.embeddings import OnnxMiniLM

    emb = OnnxMiniLM()
    emb.embed_query("warm up")
    return emb


@pytest.fixture
def data_dir(request, tmp_path: Path) -> Iterator[Path]:
    """The test's data dir. Under ``--deployment=scaleout`` its stores are servers instead:
    `MEMOS_CATALOG_URL`, `MEMOS_CHROMA_URL` and `MEMOS_GRAPH_URL` name this test's private
    PostgreSQL schema, the session's Chroma server and its own FalkorDB database, so every
    `MemOS.open` of the test (a reopen, a worker subprocess) joins the same deployment; the
    dir then keeps only the audit key and the blobs."""
    d = tmp_path / "memos"
    if deployment_of(request.config) == "embedded":
        yield d
        from memos_agents.graph.falkordb_server import stop_server

        stop_server(d / "graph")
        return
    # a patcher of its own: a test's `monkeypatch.undo()` must not move it off the deployment
    with scaleout_stores(request.getfixturevalue("scaleout_services")) as urls, \
            pytest.MonkeyPatch.context() as env:
        for name, url in urls.items():
            env.setenv(f"MEMOS_{name.upper()}", url)
        yield d
    embedded = [p.name for p in (d / "chroma", d / "graph") if p.exists()]
    assert not embedded, f"the test opened embedded stores under --deployment=scaleout: {embedded}"


@pytest.fixture
def mem(data_dir: Path, embedder):
    """A MemOS on `data_dir`: the embedded stores, or the scale-out deployment's servers."""
    from memos_agents import MemOS

    m = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30)
    yield m
    m.close()


# ---- the scale-out deployment (--deployment=scaleout) -----------------------------------


def pytest_addoption(parser) -> None:
    group = parser.getgroup("memos-agents")
    group.addoption(
        "--deployment",
        choices=("embedded", "scaleout"),
        default="embedded",
        help="the stores behind the `mem` / `data_dir` fixtures: the embedded defaults, or a "
        "scale-out deployment (the local PostgreSQL, a Chroma server and a FalkorDB TCP server "
        "started for the session)",
    )
    group.addoption(
        "--scaleout-graph",
        choices=("falkordb", "neo4j"),
        default="falkordb",
        help="the graph of --deployment=scaleout: the session's FalkorDB server, or the Neo4j "
        "at NEO4J_URI (every node of its database is deleted after each test: a throwaway one)",
    )


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "embedded_only(reason): the test inspects the embedded stores; skipped under "
        "--deployment=scaleout",
    )


def pytest_runtest_setup(item) -> None:
    marker = item.get_closest_marker("embedded_only")
    if marker is not None and deployment_of(item.config) != "embedded":
        reason = marker.args[0] if marker.args else "needs the embedded stores"
        pytest.skip(f"embedded deployment only: {reason}")


def at_once(n: int, rounds: int, work: Callable[[int, int], object]) -> list[BaseException]:
    """Run `work(i, round)` on `n` threads released together behind a barrier, `rounds` times;
    the errors they raised."""
    import threading

    errors: list[BaseException] = []

    def run(i: int, k: int, gate: threading.Barrier) -> None:
        try:
            gate.wait()
            work(i, k)
        except BaseException as exc:
            errors.append(exc)

    for k in range(rounds):
        gate = threading.Barrier(n)
        threads = [threading.Thread(target=run, args=(i, k, gate)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return errors


def caught_changes(monkeypatch, catalog) -> list[str]:
    """The ids of the cubes `catalog.scope_changes` returns (the rows a scope index's catch-up
    parses), recorded from now on."""
    caught: list[str] = []
    changes = catalog.scope_changes

    def counted(*args: object, **kw: object) -> list:
        got = changes(*args, **kw)
        caught.extend(cube.id for cube in got)
        return got

    monkeypatch.setattr(catalog, "scope_changes", counted)
    return caught


def deployment_of(config) -> str:
    return str(config.getoption("--deployment", default="embedded"))


def scaleout(config) -> bool:
    """Whether this run's `mem` / `data_dir` fixtures are on the scale-out deployment."""
    return deployment_of(config) == "scaleout"


class ScaleoutServices:
    """The session's Chroma server and FalkorDB TCP server (one numbered database per test)."""

    def __init__(self, root: Path, graph: str = "falkordb") -> None:
        from tests.scaleout_servers import start_chroma, start_falkordb

        self.graph = graph
        self.chroma = start_chroma(root / "chroma")
        try:
            self.falkordb = start_falkordb(root / "falkordb", databases=FALKOR_DATABASES)
        except BaseException:
            self.chroma.stop()
            raise
        self._next_db = 0

    def next_db(self) -> int:
        """The FalkorDB database of the next test (0 stays unused: the default of a client)."""
        self._next_db = self._next_db % (FALKOR_DATABASES - 1) + 1
        return self._next_db

    def stop(self) -> None:
        self.chroma.stop()
        self.falkordb.stop()


FALKOR_DATABASES = 1024


@pytest.fixture(scope="session")
def scaleout_services(request, tmp_path_factory) -> Iterator[ScaleoutServices]:
    """One Chroma server and one FalkorDB TCP server for the whole session, stopped at its
    end; needs the local PostgreSQL (skips without it)."""
    if not _pg_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: the scale-out catalog")
    graph = str(request.config.getoption("--scaleout-graph", default="falkordb"))
    if graph == "neo4j" and not os.environ.get("NEO4J_URI"):
        pytest.skip("--scaleout-graph=neo4j needs NEO4J_URI")
    services = ScaleoutServices(tmp_path_factory.mktemp("scaleout"), graph=graph)
    yield services
    services.stop()
    assert not services.chroma.alive() and not services.falkordb.alive()


def _new_schema() -> str:
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    eng = sa.create_engine(PG_URL)
    try:
        with eng.begin() as c:
            c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    finally:
        eng.dispose()
    return schema


def _drop_schema(schema: str) -> None:
    import sqlalchemy as sa

    eng = sa.create_engine(PG_URL)
    try:
        with eng.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        eng.dispose()


def _clear_chroma(services: ScaleoutServices) -> None:
    """Delete every collection of the Chroma server (pytest runs tests one at a time)."""
    import chromadb
    from chromadb.config import Settings

    client = chromadb.HttpClient(host="127.0.0.1", port=services.chroma.port,
                                 settings=Settings(anonymized_telemetry=False))
    try:
        for col in client.list_collections():
            client.delete_collection(col.name)
    finally:
        client.close()


def _clear_graph(services: ScaleoutServices, db: int) -> None:
    if services.graph == "neo4j":
        from neo4j import GraphDatabase

        auth = (os.environ.get("NEO4J_USER", "neo4j"), os.environ.get("NEO4J_PASSWORD", ""))
        with GraphDatabase.driver(os.environ["NEO4J_URI"], auth=auth) as driver:
            driver.execute_query("MATCH (n) DETACH DELETE n",
                                 database_=os.environ.get("NEO4J_DATABASE") or None)
        return
    import redis

    with redis.Redis(host="127.0.0.1", port=services.falkordb.port, db=db) as r:
        r.flushdb()


@contextlib.contextmanager
def scaleout_stores(services: ScaleoutServices) -> Iterator[dict[str, str]]:
    """Fresh stores of one test on the session's servers: a new PostgreSQL schema, the Chroma
    server, a FalkorDB database of its own (or the Neo4j at NEO4J_URI); `catalog_url`,
    `chroma_url` and `graph_url` for `MemOS.open`. Afterwards the schema is dropped, the graph
    database flushed and the Chroma server's collections deleted: Chroma has no namespace an
    URL can pick, so this relies on tests running one at a time."""
    from tests.scaleout_servers import chroma_url, falkordb_url

    schema, db = _new_schema(), services.next_db()
    graph = os.environ["NEO4J_URI"] if services.graph == "neo4j" else None
    try:
        yield {
            "catalog_url": f"{PG_URL}?options=-csearch_path%3D{schema}",
            "chroma_url": chroma_url(services.chroma),
            "graph_url": graph or falkordb_url(services.falkordb, db),
        }
    finally:
        _drop_schema(schema)
        _clear_chroma(services)
        _clear_graph(services, db)


def _pg_available() -> bool:
    try:
        import sqlalchemy as sa

        eng = sa.create_engine(PG_URL)
        with eng.connect() as c:
            c.execute(sa.text("select 1"))
        eng.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request, tmp_path: Path) -> Iterator[str]:
    """A fresh catalog: a SQLite file, or a private schema in the local PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    if not _pg_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    eng = sa.create_engine(PG_URL)
    with eng.begin() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with eng.begin() as c:
        c.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    eng.dispose()


# the model process: one per test session, started through a host MemOS (tests/test_model.py)
@pytest.fixture(scope="session")
def model_cache(request, tmp_path_factory) -> Path:
    env = os.environ.get("MEMOS_MODEL_CACHE")
    if env:
        return Path(env)
    try:
        return Path(request.config.cache.mkdir("memos-models"))
    except Exception:
        return tmp_path_factory.mktemp("memos-models")


@pytest.fixture(scope="session")
def model_host(tmp_path_factory, model_cache, embedder):
    """A MemOS that starts the model process as its child, and stops it at the end."""
    from memos_agents import MemOS
    from memos_agents.graph.falkordb_server import stop_server
    from memos_agents.model.memory import runtime

    old = os.environ.get("MEMOS_MODEL_CACHE")
    os.environ["MEMOS_MODEL_CACHE"] = str(model_cache)
    d = tmp_path_factory.mktemp("model-host") / "memos"
    host = MemOS.open(d, embedder=embedder, graph_idle_timeout=30)
    try:
        host.model()
        yield host
        proc = runtime(host).process
        assert host.stop_model()
        assert proc is not None and not proc.alive()
        assert not (d / "model" / "server.json").exists()
    finally:
        host.close()
        stop_server(d / "graph")
        if old is None:
            os.environ.pop("MEMOS_MODEL_CACHE", None)
        else:
            os.environ["MEMOS_MODEL_CACHE"] = old


def share_blobs(data_dir: Path, host: Any) -> None:
    """Make `data_dir`'s blob folder a link to the host's: the model process reads and writes
    files only under the blob root of the data dir it was started for."""
    blobs = data_dir / "blobs"
    data_dir.mkdir(parents=True, exist_ok=True)
    if blobs.is_dir() and not blobs.is_symlink():
        blobs.rmdir()
    blobs.symlink_to(host.config.data_dir / "blobs", target_is_directory=True)


@pytest.fixture
def lm(mem, model_host):
    """The per-test MemOS, pointed at the session's model process by URL and token (its blob
    folder is the host's)."""
    from memos_agents.model.memory import runtime

    client = runtime(model_host).client
    share_blobs(mem.config.data_dir, model_host)
    mem.model(client.url, api_key=client.api_key)
    return mem
