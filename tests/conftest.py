from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
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
def data_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "memos"
    yield d
    from memos_agents.graph.falkordb_server import stop_server

    stop_server(d / "graph")


@pytest.fixture
def mem(data_dir: Path, embedder):
    from memos_agents import MemOS

    m = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30)
    yield m
    m.close()


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
