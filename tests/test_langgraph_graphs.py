"""Memory nodes, tools, middleware and the ready-made graphs, run for real against MemOS."""

from __future__ import annotations

import importlib.util
import inspect
import json
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from memos_agents.graphs import common
from memos_agents.graphs.memory_agent import build_memory_agent
from memos_agents.graphs.team import build_team
from memos_agents.langgraph import MemOSMiddleware, memory_tools, recall_node

from memos_agents import MemOS
from memos_agents.errors import InvalidInput

from .scripted import ScriptedChatModel

ROOT = Path(__file__).resolve().parents[1]


def cfg(user: str, thread: str) -> dict:
    return {"configurable": {"user_id": user, "thread_id": thread}}


def test_memory_agent_remembers_across_runs_and_threads(data_dir, embedder) -> None:
    model = ScriptedChatModel(replies=["Noted!", "Your dog is Miso."])
    with MemOS.open(data_dir, embedder=embedder) as mem:
        agent = build_memory_agent(mem, model, checkpointer=InMemorySaver())
        agent.invoke(
            {"messages": [HumanMessage("My dog is called Miso and I live in Lisbon.")]},
            cfg("alice", "t1"),
        )
        agent.invoke({"messages": [HumanMessage("I collect vintage cameras.")]}, cfg("bob", "t9"))
    # a new process-like start: fresh MemOS, fresh graph, new thread
    model2 = ScriptedChatModel(replies=["Your dog is Miso."])
    with MemOS.open(data_dir, embedder=embedder) as mem:
        agent = build_memory_agent(mem, model2)
        out = agent.invoke(
            {"messages": [HumanMessage("What is my dog's name?")]}, cfg("alice", "t2")
        )
        assert "My dog is called Miso" in model2.seen_system[0]
        assert "vintage cameras" not in model2.seen_system[0]  # bob's memory never reaches alice
        assert out["memories"][0]["content"].startswith("My dog is called Miso")
        assert out["messages"][-1].content == "Your dog is Miso."
        stored = mem.list(user_id="alice")
        assert {c.provenance.role for c in stored} == {"user", "assistant"}
        assert {c.scope.session_id for c in stored} == {"t1", "t2"}


def test_nodes_need_a_user(mem: MemOS) -> None:
    node = recall_node(mem)
    with pytest.raises(InvalidInput, match="no user_id"):
        node({"messages": [HumanMessage("hi")]}, {"configurable": {}})


def test_team_shares_findings_but_keeps_private_memory(data_dir, embedder) -> None:
    researcher = ScriptedChatModel(replies=["- Lisbon has 300 sunny days\n- Trams run until 23:00"])
    writer = ScriptedChatModel(replies=["Lisbon is sunny and its trams run late."])
    with MemOS.open(data_dir, embedder=embedder) as mem:
        team = build_team(mem, researcher, writer, team="t1")
        out = team.invoke({"messages": [HumanMessage("Brief me on Lisbon.")]}, cfg("boss", "r1"))
        assert [f["content"] for f in out["findings"]] == [
            "Lisbon has 300 sunny days",
            "Trams run until 23:00",
        ]
        assert "Trams run until 23:00" in writer.seen_system[0]
        assert out["messages"][-1].name == "writer"
        # private memories: each agent's own partition; the writer cannot recall research notes
        w = mem.search("sunny days trams", user_id="writer", vault="team:t1", k=10)
        r = mem.search("sunny days trams", user_id="researcher", vault="team:t1", k=10)
        assert all(h.cube.scope.user_id == "writer" for h in w)
        assert any("300 sunny days" in h.cube.content for h in r)
        assert not any(h.cube.content.startswith("- Lisbon has 300") for h in w)

        # a second run: only new findings are delivered (durable cursor)
        researcher.replies = ["Pastel de nata costs 1.30 EUR"]
        out2 = team.invoke({"messages": [HumanMessage("And food?")]}, cfg("boss", "r2"))
        assert [f["content"] for f in out2["findings"]] == ["Pastel de nata costs 1.30 EUR"]


def test_memory_tools_scope_to_the_run_user(mem: MemOS) -> None:
    search, save = memory_tools(mem)
    save.invoke({"fact": "Alice is vegetarian."}, config=cfg("alice", "t"))
    mem.add("Bob eats everything.", user_id="bob")
    found = search.invoke({"query": "diet"}, config=cfg("alice", "t"))
    assert "vegetarian" in found and "Bob" not in found
    assert search.invoke({"query": "diet"}, config=cfg("carol", "t")) == "No matching memories."
    assert "user_id" not in json.dumps(search.args)  # the model cannot choose the user


def test_middleware_injects_and_remembers(mem: MemOS) -> None:
    from langchain.agents import create_agent

    mem.add("Alice's favourite colour is teal.", user_id="alice")
    model = ScriptedChatModel(replies=["Teal!"])
    agent = create_agent(model, tools=[], middleware=[MemOSMiddleware(mem)])
    out = agent.invoke(
        {"messages": [HumanMessage("What colour should my bike be?")]}, cfg("alice", "m1")
    )
    assert out["messages"][-1].content == "Teal!"
    assert "favourite colour is teal" in model.seen_system[0]
    assert {c.content for c in mem.list(user_id="alice")} >= {
        "What colour should my bike be?",
        "Teal!",
    }


def test_langgraph_json_names_both_graphs() -> None:
    spec = json.loads((ROOT / "langgraph.json").read_text())
    assert set(spec["graphs"]) == {"memory_agent", "team"}
    for target in spec["graphs"].values():
        path, _, func = target.partition(":")
        assert (ROOT / path).is_file() and f"def {func}(" in (ROOT / path).read_text()


@pytest.mark.parametrize("file", ["memory_agent.py", "team.py", "store.py"])
def test_graph_files_load_by_path_as_the_server_loads_them(file: str) -> None:
    """The LangGraph server execs each file of langgraph.json as a module of its own name; the
    files still share `memos_agents.graphs.common`, so one server process has one MemOS."""
    spec = importlib.util.spec_from_file_location(f"graphs__{file[:-3]}", ROOT / "graphs" / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entry = module.make_store if file == "store.py" else module.make_graph
    assert inspect.iscoroutinefunction(entry)  # built off the server's event loop
    assert module.server_memos is common.server_memos


def test_schedule_node_plans_memory_forms(mem: MemOS) -> None:
    from memos_agents.langgraph import schedule_node

    mem.add(["Alice's cat is called Tofu.", "Alice lives in Lisbon."], user_id="alice")
    out = schedule_node(mem)(
        {"messages": [HumanMessage("What is my cat called?")]}, cfg("alice", "p1")
    )
    plan = out["plan"]
    assert plan["user_id"] == "alice" and plan["steps"]
    assert all(step["reason"] for step in plan["steps"])
    assert plan["steps"][-1]["form"] == "plaintext"
