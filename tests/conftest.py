from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

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
