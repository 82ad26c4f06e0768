"""`langgraph.json` in the real LangGraph dev server (`langgraph dev`, in-memory runtime), driven
through `langgraph_sdk`: the graphs load by file path, `memory_agent` recalls one thread's memory
in another thread of the same user, and `client.store.*` lands in MemOS. Offline: the graphs
answer with the packaged local model, memory is MemOS at a data dir under tmp_path."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from langgraph_sdk import get_sync_client
from langgraph_sdk.client import SyncLangGraphClient
from memos_agents.langgraph import MemOSStore

from memos_agents import MemOS

ROOT = Path(__file__).resolve().parents[1]
LANGGRAPH = Path(sys.executable).parent / "langgraph"
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll the server's /ok until it answers, it exits, or READY_TIMEOUT_S passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"langgraph dev exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ok", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"langgraph dev not ready in {READY_TIMEOUT_S:g} s:\n{log.read_text()[-4000:]}")


def server_env(data_dir: Path) -> dict[str, str]:
    """This process's environment, offline, with MemOS at `data_dir` and the local model."""
    env = {k: v for k, v in os.environ.items() if k not in ("MEMOS_CHAT_MODEL", "MEMOS_MODEL_URL")}
    env.update(
        MEMOS_DATA_DIR=str(data_dir),
        HF_HUB_OFFLINE="1",
        LANGSMITH_TRACING="false",
        LANGCHAIN_TRACING_V2="false",
        LANGGRAPH_CLI_NO_ANALYTICS="1",
    )
    return env


@contextmanager
def langgraph_dev(tmp_path: Path, data_dir: Path) -> Iterator[SyncLangGraphClient]:
    """`langgraph dev` on a free 127.0.0.1 port with the repo's langgraph.json, stopped (with
    its model process) on exit. It runs in tmp_path, where the in-memory runtime keeps its own
    state (./.langgraph_api), with the config's paths made absolute (they name repo files)."""
    config = json.loads((ROOT / "langgraph.json").read_text())
    config["dependencies"] = [str(ROOT / d) for d in config["dependencies"]]
    config["graphs"] = {name: str(ROOT / target) for name, target in config["graphs"].items()}
    config["store"]["path"] = str(ROOT / config["store"]["path"])
    config_path = tmp_path / "langgraph.json"
    config_path.write_text(json.dumps(config))
    port = free_port()
    command = [str(LANGGRAPH), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--config", str(config_path)]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=server_env(data_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, log)
        yield get_sync_client(url=url, timeout=90)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_agent(client: SyncLangGraphClient, user: str, text: str) -> tuple[str, dict]:
    thread = client.threads.create()
    out = client.runs.wait(
        thread["thread_id"],
        "memory_agent",
        input={"messages": [{"role": "user", "content": text}]},
        config={"configurable": {"user_id": user}},
        raise_error=True,
    )
    assert isinstance(out, dict)
    return thread["thread_id"], out


def test_memory_agent_and_store_in_the_langgraph_server(tmp_path: Path, data_dir: Path) -> None:
    with langgraph_dev(tmp_path, data_dir) as client:
        assistants = client.assistants.search()
        assert {a["graph_id"] for a in assistants} == {"memory_agent", "team"}

        t1, first = run_agent(client, "alice", "My favourite colour is teal.")
        said = next(m for m in first["messages"] if m["type"] == "human")
        assert first["messages"][-1]["type"] == "ai"
        run_agent(client, "bob", "I collect vintage cameras.")
        t2, second = run_agent(client, "alice", "What is my favourite colour?")
        recalled = [m["content"] for m in second["memories"]]
        assert recalled[0] == "My favourite colour is teal."  # into the model's system message
        assert second["memories"][0]["source_refs"] == [said["id"]]
        assert not any("cameras" in c for c in recalled)  # bob's memory never reaches alice

        client.store.put_item(["prefs", "alice"], "colour", {"colour": "teal"})
        item = client.store.get_item(["prefs", "alice"], "colour")
        assert item is not None and item["value"] == {"colour": "teal"}
        found = client.store.search_items(["prefs"], query="which colour")["items"]
        assert [(i["namespace"], i["key"]) for i in found] == [(["prefs", "alice"], "colour")]

    # the server is gone; its memories and store items are MemOS cubes in the data dir
    with MemOS.open(data_dir) as mem:
        stored = mem.list(user_id="alice")
        assert {c.scope.session_id for c in stored} == {t1, t2}
        assert any(c.content == "My favourite colour is teal." for c in stored)
        store = MemOSStore(mem)
        kept = store.get(("prefs", "alice"), "colour")
        assert kept is not None and kept.value == {"colour": "teal"}
        assert [v.version for v in mem.history(store.cube_id(("prefs", "alice"), "colour"))] == [1]
