"""The server's identity: API keys (hashed, revocable, vault-limited) and the bearer check."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from memos_agents.cli import app as cli
from memos_agents.keys import KeyStore
from memos_agents.server import create_app
from memos_agents.server.auth import ANY_KEY_TTL


@pytest.fixture
def client(mem):
    with TestClient(create_app(mem)) as c:
        yield c


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_keys_are_stored_hashed_and_resolve_until_revoked(mem):
    keys = KeyStore(mem.vault.catalog.engine)
    rec, secret = keys.create("user:alice", vaults=["default"], label="laptop")
    assert keys.resolve(secret).principal == "user:alice"
    with mem.vault.catalog.engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.exec_driver_sql("select * from memos_api_keys")
                          for v in row)
    assert secret not in stored and secret.split("_", 2)[2] not in stored
    assert keys.resolve(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert keys.revoke(rec.id).revoked_at is not None
    assert keys.resolve(secret) is None
    assert [k.id for k in keys.list(include_revoked=True)] == [rec.id]
    assert keys.list() == []


def test_open_mode_until_a_key_exists_then_the_key_decides(mem, client):
    assert client.get("/v1/whoami").json()["principal"] == "system"
    _, secret = KeyStore(mem.vault.catalog.engine).create("user:alice")
    time.sleep(ANY_KEY_TTL + 0.1)  # the authenticator looks for keys again after its TTL
    r = client.get("/v1/whoami")
    assert r.status_code == 401 and r.json()["error"] == "Unauthenticated"
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/whoami", headers=_bearer("mk_nope")).status_code == 401
    assert client.get("/v1/whoami", headers=_bearer(secret)).json()["principal"] == "user:alice"
    denied = [e for e in mem.audit_log() if e.op == "authenticate"]
    assert [e.outcome for e in denied] == ["denied", "denied"]


def test_a_required_server_refuses_requests_without_a_key(mem):
    with TestClient(create_app(mem, auth=True)) as c:
        r = c.get("/v1/whoami")
    assert r.status_code == 401 and "API key" in r.json()["message"]


def test_errors_are_json_without_a_trace(mem):
    with TestClient(create_app(mem, max_body=10)) as c:
        r = c.post("/v1/whoami", content=b"x" * 100, headers={"content-type": "text/plain"})
        assert r.status_code == 413 and r.json()["error"] == "BodyTooLarge"
        r = c.get("/v1/no-such-route")
        assert r.status_code == 404 and set(r.json()) == {"error", "message"}


def test_cli_key_create_list_revoke_and_role(data_dir, embedder):
    run = CliRunner()
    out = run.invoke(cli, ["key", "create", "--principal", "agent:bot", "--vault", "team",
                           "--role", "writer", "--dir", str(data_dir)])
    assert out.exit_code == 0, out.output
    secret = out.output.strip().splitlines()[-1]
    assert secret.startswith("mk_")
    listed = run.invoke(cli, ["key", "list", "--json", "--dir", str(data_dir)])
    assert "agent:bot" in listed.output and secret not in listed.output
    from memos_agents import MemOS

    with MemOS.open(data_dir, embedder=embedder) as mem:
        assert mem.governance.role("team", "agent:bot") == "writer"
        key = KeyStore(mem.vault.catalog.engine).resolve(secret)
        assert key.vaults == ["team"]
    bad = run.invoke(cli, ["key", "create", "--principal", "alice", "--dir", str(data_dir)])
    assert bad.exit_code != 0 and "principal" in bad.output
    gone = run.invoke(cli, ["key", "revoke", key.id, "--dir", str(data_dir)])
    assert gone.exit_code == 0
    missing = run.invoke(cli, ["key", "revoke", "nope", "--dir", str(data_dir)])
    assert missing.exit_code == 1


def test_serve_refuses_a_public_address_without_keys(data_dir, embedder):
    out = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--dir", str(data_dir)])
    assert out.exit_code == 2 and "without authentication" in out.output
