"""The ready-made graph's agent step over the local model serves the recalled memories from the
scheduler's hot activation (KV) cache, turn after turn, with the reply of the text path."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from memos_agents.graphs.common import agent_step
from memos_agents.graphs.memory_agent import MemoryAgentState, build_memory_agent
from memos_agents.langgraph.nodes import recall_node

FACTS = [
    "Alice lives in Lisbon.",
    "Alice's dog is called Pixel.",
    "Alice works as a nurse at the city hospital.",
    "Alice is allergic to peanuts.",
    "Alice plays the cello on Sundays.",
]
QUESTIONS = ["Where does Alice live?", "What is her dog called?", "What does she play?"]


def _text_graph(lm: Any, model: Any, ids: list[str]) -> Any:
    """recall fixed to `ids` (the cache's memories, in its order), then the text path."""
    contents = {c.id: c.content for c in (lm.get(i) for i in ids)}

    def recall(state: dict[str, Any]) -> dict[str, Any]:
        return {"memories": [{"id": i, "content": contents[i]} for i in ids]}

    g = StateGraph(MemoryAgentState)
    g.add_sequence([("recall", recall), ("respond", agent_step(model, None, mem=lm,
                                                                activation=False))])
    g.add_edge(START, "recall")
    return g.compile(checkpointer=InMemorySaver())


def _kv_graph(lm: Any, model: Any) -> Any:
    """recall_node, then the memory agent's step over the local model (no remember: the same
    memories each turn)."""
    g = StateGraph(MemoryAgentState)
    g.add_sequence([("recall", recall_node(lm)), ("respond", agent_step(model, None, mem=lm))])
    g.add_edge(START, "recall")
    return g.compile(checkpointer=InMemorySaver())


def test_graph_turns_reuse_the_scheduled_kv_cache(lm):
    ids = [c.id for c in lm.add(FACTS, user_id="alice")]
    sched = lm.scheduler
    sched.promote("alice", ids)
    [done] = sched.run_pending()
    assert done.state == "done", done.error
    hot = lm.get(done.result["cube_id"])
    model = lm.chat_model(max_tokens=16)
    kv = _kv_graph(lm, model)
    text = _text_graph(lm, model, list(hot.provenance.derived_from))
    cfg = {"configurable": {"user_id": "alice", "thread_id": "kv"}}
    tcfg = {"configurable": {"user_id": "alice", "thread_id": "text"}}
    for turn, q in enumerate(QUESTIONS):
        got = kv.invoke({"messages": [HumanMessage(q)]}, cfg)["messages"][-1]
        ref = text.invoke({"messages": [HumanMessage(q)]}, tcfg)["messages"][-1]
        used = got.response_metadata["memos"]
        assert used["activation"] == hot.id and used["planned"], (turn, used)
        assert used["cached_tokens"] > 0, (turn, used)
        assert ref.response_metadata["memos"]["activation"] is None
        assert ref.response_metadata["memos"]["cached_tokens"] == 0
        assert got.content == ref.content, (turn, got.content, ref.content)
        assert got.content.strip()


def test_memory_agent_over_the_local_model_uses_the_hot_cache(lm):
    ids = [c.id for c in lm.add(FACTS, user_id="bob")]
    lm.scheduler.promote("bob", ids)
    [done] = lm.scheduler.run_pending()
    graph = build_memory_agent(lm, lm.chat_model(max_tokens=8), checkpointer=InMemorySaver())
    out = graph.invoke(
        {"messages": [HumanMessage("Where does Alice live?")]},
        {"configurable": {"user_id": "bob", "thread_id": "t"}},
    )
    used = out["messages"][-1].response_metadata["memos"]
    assert used["activation"] == done.result["cube_id"] and used["cached_tokens"] > 0
