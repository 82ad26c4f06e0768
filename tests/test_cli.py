"""The `memos-agents` command line, run in-process on the real embedded stores."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from memos_agents.cli import app
from tests.conftest import scaleout

LOCOMO = Path(__file__).resolve().parents[1] / "bench" / "data" / "locomo" / "locomo_dev.json"
runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_cli_round_trip(data_dir: Path, tmp_path: Path, request) -> None:
    d = ["--dir", str(data_dir)]
    assert "initialised" in run("init", *d)
    cube_id = run(
        "add",
        "I moved to Lisbon in May; my dog is called Miso.",
        "--user",
        "alice",
        "--session",
        "s1",
        *d,
    ).strip()
    hits = json.loads(run("search", "where is the dog?", "--user", "alice", "--json", *d))
    assert hits[0]["id"] == cube_id and hits[0]["provenance"]["created_by"] == "user:alice"
    shown = json.loads(run("show", cube_id, *d))
    assert shown["content"].startswith("I moved to Lisbon") and shown["lifecycle"]["version"] == 1

    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        "\n".join(
            json.dumps(m)
            for m in [
                {
                    "role": "user",
                    "content": "I started learning the cello.",
                    "user_id": "bob",
                    "session_id": "x",
                },
                {
                    "role": "assistant",
                    "content": "How exciting!",
                    "user_id": "bob",
                    "session_id": "x",
                },
            ]
        )
    )
    assert "ingested 2 memories" in run("ingest", str(chat), *d)
    bob = json.loads(run("search", "instrument", "--user", "bob", "-k", "1", "--json", *d))
    assert bob[0]["content"] == "I started learning the cello."
    assert bob[0]["provenance"]["source_refs"] == ["chat.jsonl:1"]

    assert "deleted" in run("delete", cube_id, *d)
    hist = json.loads(run("history", cube_id, "--json", *d))
    assert [h["op"] for h in hist] == ["create", "delete"]
    stats = json.loads(run("stats", *d))
    assert stats["cubes"] == 3 and stats["by_state"] == {"active": 2, "deleted": 1}
    assert "purged" in run("delete", cube_id, "--purge", *d)
    embedded = not scaleout(request.config)  # on servers: no embedded store to stop or make
    assert ("graph server stopped" if embedded else "no graph server was running") in run(
        "down", *d)
    assert (data_dir / "graph").exists() == embedded


def test_cli_ingests_locomo_with_progress(data_dir: Path) -> None:
    d = ["--dir", str(data_dir)]
    out = run("ingest", str(LOCOMO), "--format", "locomo", *d)
    assert "ingested" in out
    n = int(out.split("ingested ")[1].split()[0])
    assert n > 600
    hits = json.loads(
        run("search", "Caroline LGBTQ support group", "--user", "conv-26", "-k", "3", "--json", *d)
    )
    assert all(h["scope"]["user_id"] == "conv-26" for h in hits)
    assert all(h["provenance"]["source_refs"][0].startswith("D") for h in hits)


def test_cli_errors_are_clear(data_dir: Path) -> None:
    d = ["--dir", str(data_dir)]
    res = runner.invoke(app, ["show", "nope", *d])
    assert res.exit_code == 1 and "no cube with id" in res.output
    res = runner.invoke(app, ["search", "", "--user", "a", *d])
    assert res.exit_code == 1 and "query must not be empty" in res.output
    res = runner.invoke(app, ["ingest", "/no/such/file.jsonl", *d])
    assert res.exit_code == 1 and "no such file" in res.output


def test_cli_channels(data_dir: Path) -> None:
    d = ["--dir", str(data_dir)]
    assert "subscribed" in run("channel", "subscribe", "findings", "agent:writer", *d)
    run(
        "channel",
        "publish",
        "findings",
        "Porto is on the Douro.",
        "--user",
        "t",
        "--agent",
        "r",
        *d,
    )
    got = json.loads(run("channel", "poll", "findings", "agent:writer", "--ack", *d))
    assert [g["cube"]["content"] for g in got] == ["Porto is on the Douro."]
    assert json.loads(run("channel", "poll", "findings", "agent:writer", *d)) == []
    chans = json.loads(run("channel", "list", *d))
    assert chans[0]["name"] == "findings" and chans[0]["published"] == 1


def test_cli_audit_export_import(data_dir: Path, tmp_path: Path) -> None:
    d = ["--dir", str(data_dir)]
    cube_id = run("add", "Exported fact", "--user", "alice", *d).strip()
    assert "audit chain intact" in run("audit", "verify", *d)
    entries = json.loads(run("audit", "show", "--cube", cube_id, *d))
    assert [e["op"] for e in entries] == ["add"]
    f = tmp_path / "x.mip.json"
    assert "exported 1 cubes" in run("export", str(f), "--user", "alice", *d)
    assert "imported 1 cubes" in run("import", str(f), "--vault", "copy", *d)
    assert "user:bob is reader of copy" in run("grant", "copy", "user:bob", "reader", *d)
    res = runner.invoke(app, ["grant", "copy", "bob", "reader", *d])
    assert res.exit_code == 1 and "principal must be" in res.output


def test_cli_graph_tree(data_dir: Path) -> None:
    d = ["--dir", str(data_dir)]
    for text in (
        "I paint sunsets at the beach.",
        "My sunset painting won a prize.",
        "I adopted a dog named Miso.",
    ):
        run("add", text, "--user", "alice", *d)
    tree = run("graph", "--user", "alice", *d)
    assert "Miso" in tree or "painting" in tree
    assert run("graph", "--user", "alice", "--dot", *d).lstrip().startswith(("digraph", "graph"))
