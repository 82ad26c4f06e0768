"""LangChain retriever (with the langchain-tests standard suite) and chat message history."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_tests.integration_tests import RetrieversIntegrationTests
from memos_agents.langchain import MemOSChatMessageHistory, MemOSRetriever

from memos_agents import MemOS
from memos_agents.graph.falkordb_server import stop_server

FACTS = [
    "Alice moved to Lisbon in May.",
    "Alice's dog is called Miso.",
    "Alice works as a pastry chef.",
    "Alice plays the cello on Sundays.",
    "Alice's sister Clara lives in Berlin.",
]


@pytest.fixture(scope="class")
def shared_mem(tmp_path_factory, embedder):
    d = tmp_path_factory.mktemp("lc") / "memos"
    mem = MemOS.open(d, embedder=embedder)
    mem.add(FACTS, user_id="alice", session_id="s1")
    mem.add("Bob lives in Oslo.", user_id="bob")
    yield mem
    mem.close()
    stop_server(d / "graph")


class TestMemOSRetrieverStandard(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _mem(self, shared_mem: MemOS) -> None:
        type(self).mem = shared_mem

    @property
    def retriever_constructor(self) -> type[MemOSRetriever]:
        return MemOSRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"mem": self.mem, "user_id": "alice"}

    @property
    def retriever_query_example(self) -> str:
        return "where does Alice live?"


def test_retriever_keeps_provenance_and_scope(shared_mem: MemOS) -> None:
    docs = MemOSRetriever(mem=shared_mem, user_id="alice", k=5).invoke("Where does everyone live?")
    assert len(docs) == 5 and all(d.metadata["user_id"] == "alice" for d in docs)
    assert not any("Oslo" in d.page_content for d in docs)
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)
    assert docs[0].metadata["session_id"] == "s1" and docs[0].id == docs[0].metadata["id"]
    assert MemOSRetriever(mem=shared_mem, user_id="carol").invoke("anything") == []


def test_chat_history_round_trip(mem: MemOS) -> None:
    h = MemOSChatMessageHistory(mem, user_id="alice", session_id="chat-1")
    h.add_messages([HumanMessage("I like green tea."), AIMessage("Noted, green tea it is.")])
    h.add_user_message("And oat milk.")
    other = MemOSChatMessageHistory(mem, user_id="alice", session_id="chat-2")
    other.add_user_message("A different session.")
    msgs = MemOSChatMessageHistory(mem, user_id="alice", session_id="chat-1").messages
    assert [(type(m).__name__, m.content) for m in msgs] == [
        ("HumanMessage", "I like green tea."),
        ("AIMessage", "Noted, green tea it is."),
        ("HumanMessage", "And oat milk."),
    ]
    assert mem.search("what does alice drink", user_id="alice", k=1)[0].cube.content in {
        m.content for m in msgs
    }
    h.clear()
    assert h.messages == [] and len(other.messages) == 1
    assert [v.op for v in mem.history(msgs[0].id)] == ["create", "delete"]
