"""The LlamaIndex adapter, run inside llama-index's real chat engines, agent and Memory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import (
    ChatMessage,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.chat_engine import CondensePlusContextChatEngine, SimpleChatEngine
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.mock import (
    MockFunctionCallingLLMWithChatMemoryOfLastCall,
    MockLLMWithChatMemoryOfLastCall,
)
from llama_index.core.memory import Memory
from llama_index.core.schema import MetadataMode
from llama_index.core.storage.chat_store.sql import MessageStatus
from llama_index.core.tools import FunctionTool
from memos_agents.llamaindex import MemOSMemory, MemOSMemoryBlock, MemOSRetriever
from pydantic import Field

from memos_agents import MemOS

ALICE = [
    {"role": "user", "content": "My dog is called Miso and I live in Lisbon."},
    {"role": "user", "content": "I collect vintage film cameras."},
    {"role": "user", "content": "I am allergic to peanuts."},
]
BOB = "My dog is called Rex and I live in Oslo."


class ScriptedLLM(CustomLLM):
    """Replies with the next scripted line and records every prompt it gets."""

    replies: list[str]
    prompts: list[str] = Field(default_factory=list)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata()

    def _reply(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.replies[(len(self.prompts) - 1) % len(self.replies)]

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._reply(prompt))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        text = self._reply(prompt)
        yield CompletionResponse(text=text, delta=text)


def seed(mem: MemOS) -> None:
    mem.add(ALICE, user_id="alice", session_id="old")
    mem.add(BOB, user_id="bob", session_id="old")


def system_text(messages: Sequence[ChatMessage]) -> str:
    return "\n".join(m.content or "" for m in messages if m.role == MessageRole.SYSTEM)


def test_simple_chat_engine_remembers_across_engines_and_reopen(data_dir, embedder) -> None:
    with MemOS.open(data_dir, embedder=embedder) as mem:
        llm = MockLLMWithChatMemoryOfLastCall(max_tokens=2)
        memory = MemOSMemory.from_defaults(mem=mem, user_id="alice", session_id="s1")
        engine = SimpleChatEngine.from_defaults(llm=llm, memory=memory)
        engine.chat("My dog is called Miso and I live in Lisbon.")
        engine.chat("I collect vintage film cameras.")
        # what is already in the chat history is not recalled a second time
        assert system_text(llm.last_chat_messages or []) == ""
        bob = MemOSMemory.from_defaults(mem=mem, user_id="bob", session_id="b1")
        SimpleChatEngine.from_defaults(llm=llm, memory=bob).chat(BOB)

    with MemOS.open(data_dir, embedder=embedder) as mem:
        llm2 = MockLLMWithChatMemoryOfLastCall(max_tokens=2)
        memory2 = MemOSMemory.from_defaults(mem=mem, user_id="alice", session_id="s2")
        engine2 = SimpleChatEngine.from_defaults(llm=llm2, memory=memory2)
        reply = engine2.chat("What is my dog's name?")
        sent = llm2.last_chat_messages or []
        assert [m.role for m in sent] == [MessageRole.SYSTEM, MessageRole.USER]
        recalled = sent[0].content or ""
        assert recalled.splitlines()[1].endswith(
            "user: My dog is called Miso and I live in Lisbon."
        )
        assert "vintage film cameras" in recalled
        assert "Rex" not in recalled and "Oslo" not in recalled
        assert "What is my dog's name?" not in recalled  # the question is not its own memory
        assert reply.response == "text text"
        assert [m.content for m in engine2.chat_history] == ["What is my dog's name?", "text text"]

        stored = mem.list(user_id="alice")
        assert len(stored) == 6
        assert {c.scope.session_id for c in stored} == {"s1", "s2"}
        assert {c.provenance.role for c in stored} == {"user", "assistant"}
        refs = {c.content: c.provenance.source_refs for c in stored if c.scope.session_id == "s1"}
        assert refs["I collect vintage film cameras."] == ['["default","alice","s1"]#2']


async def test_condense_plus_context_engine(mem: MemOS) -> None:
    seed(mem)
    llm = ScriptedLLM(replies=["Where does the user live?", "You live in Lisbon."])
    memory = MemOSMemory.from_defaults(mem=mem, user_id="alice", session_id="c1", k=2)
    engine = CondensePlusContextChatEngine.from_defaults(
        retriever=MemOSRetriever(mem, "alice", k=2), llm=llm, memory=memory
    )
    out = engine.chat("Where do I live?")
    assert out.response == "You live in Lisbon."
    condense, answer = llm.prompts
    assert "Follow Up Input: Where do I live?" in condense
    assert out.source_nodes[0].node.get_content() == ALICE[0]["content"]
    assert all(n.node.metadata["user_id"] == "alice" for n in out.source_nodes)
    # the retrieved context and the recalled memories both reach the answer prompt; bob's don't
    assert "Here are the relevant documents" in answer and "Long-term memories" in answer
    assert answer.count("I live in Lisbon") == 2
    assert "Oslo" not in answer
    stored = {c.content for c in mem.list(user_id="alice", session_id="c1")}
    assert stored == {"Where do I live?", "You live in Lisbon."}

    llm.replies = ["What does the user collect?", "Film cameras."]
    llm.prompts.clear()
    out = await engine.achat("And what do I collect?")
    assert out.response == "Film cameras."
    assert out.source_nodes[0].node.get_content() == ALICE[1]["content"]
    assert len(memory.get_all()) == 4


async def test_function_agent_runs_with_memos_memory(mem: MemOS) -> None:
    seed(mem)
    weather_calls: list[str] = []

    def weather(city: str = "Lisbon") -> str:
        """The weather in a city."""
        weather_calls.append(city)
        return f"Sunny in {city}"

    llm = MockFunctionCallingLLMWithChatMemoryOfLastCall()
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(fn=weather)], llm=llm, system_prompt="Be brief."
    )
    memory = MemOSMemory.from_defaults(mem=mem, user_id="alice", session_id="a1")
    result = await agent.run(user_msg="Is it sunny where my dog lives?", memory=memory)

    assert weather_calls == ["Lisbon"]
    assert str(result) == "Tool calls complete."
    sent = llm.last_chat_messages or []
    assert sent[0].content == "Be brief."
    assert "My dog is called Miso and I live in Lisbon." in system_text(sent)
    assert "Rex" not in system_text(sent)
    history = memory.get_all()
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
    assert any(isinstance(b, ToolCallBlock) for b in history[1].blocks)
    # the tool call and its result stay in the chat history only
    stored = {c.content: c.provenance.role for c in mem.list(user_id="alice", session_id="a1")}
    assert stored == {
        "Is it sunny where my dog lives?": "user",
        "Tool calls complete.": "assistant",
    }


async def test_memory_block_inside_llamaindex_memory(mem: MemOS) -> None:
    seed(mem)
    block = MemOSMemoryBlock(mem=mem, user_id="alice", k=2)
    memory = Memory.from_defaults(
        session_id="li-1", token_limit=60, token_flush_size=20, memory_blocks=[block]
    )
    messages = await memory.aget(input="What is my dog called?")
    assert messages[0].role == MessageRole.SYSTEM
    recalled = messages[0].content or ""
    assert "<long_term_memory>" in recalled
    assert "My dog is called Miso" in recalled and "Rex" not in recalled

    # turns ejected from Memory's short-term queue land in MemOS, in Memory's session
    talk = [
        ("user", "I started learning the cello last month."),
        ("assistant", "That is a lovely instrument to learn."),
        ("user", "My teacher is called Ana and lessons are on Tuesdays."),
        ("assistant", "Tuesdays with Ana, noted."),
        ("user", "I also signed up for a pottery class in Porto this spring."),
        ("assistant", "Pottery in Porto sounds fun."),
    ]
    for role, text in talk:
        await memory.aput(ChatMessage(role=role, content=text))
    flushed = {c.content for c in mem.list(user_id="alice", session_id="li-1")}
    assert flushed == {text for _, text in talk[:4]}
    active = await memory.aget_all(status=MessageStatus.ACTIVE)
    assert [m.content for m in active] == [text for _, text in talk[4:]]
    messages = await memory.aget(input="Which instrument do I play?")
    assert "cello" in (messages[0].content or "")

    # truncation drops the least relevant memories first
    text = await block.aget([ChatMessage(role="user", content="my dog")])
    assert text.count("\n- ") == 2
    shorter = await block.atruncate(text, 1)
    assert shorter is not None and shorter.count("\n- ") == 1 and text.startswith(shorter)
    assert await block.atruncate(text, 10_000) is None


async def test_users_never_see_each_others_memories(mem: MemOS) -> None:
    mem.add("My secret door code is 4321.", user_id="bob")
    mem.add("I like green tea in the morning.", user_id="alice")
    query = "What is my secret door code?"

    memory = MemOSMemory.from_defaults(mem=mem, user_id="alice", k=10)
    assert "4321" not in system_text(memory.get(input=query))
    assert "4321" not in system_text(await memory.aget(input=query))
    assert "green tea" in system_text(memory.get(input=query))

    block = MemOSMemoryBlock(mem=mem, user_id="alice", k=10)
    recalled = await block.aget([ChatMessage(role="user", content=query)])
    assert "green tea" in recalled and "4321" not in recalled

    retriever = MemOSRetriever(mem, "alice", k=10)
    for nodes in (retriever.retrieve(query), await retriever.aretrieve(query)):
        assert [n.node.metadata["user_id"] for n in nodes] == ["alice"]
    assert "4321" in MemOSRetriever(mem, "bob").retrieve(query)[0].node.get_content()


async def test_retriever_nodes_carry_provenance_and_ranked_scores(mem: MemOS) -> None:
    cubes = mem.add(
        [
            {
                "role": "user",
                "content": "My dog Miso loves the beach.",
                "id": "m1",
                "speaker": "Alice",
            },
            {"role": "assistant", "content": "Beaches are great for dogs.", "id": "m2"},
            {"role": "user", "content": "I am reading a novel about Mars.", "id": "m3"},
        ],
        user_id="alice",
        session_id="s9",
        tags=["chat"],
    )
    retriever = MemOSRetriever(mem, "alice", k=3)
    nodes = retriever.retrieve("Where does my dog like to go?")
    assert len(nodes) == 3
    scores = [n.score for n in nodes]
    assert scores == sorted(scores, reverse=True) and all(s is not None for s in scores)
    top = nodes[0]
    assert top.node.node_id == cubes[0].id
    meta = top.node.metadata
    assert meta["source_refs"] == ["m1"]
    assert meta["session_id"] == "s9" and meta["user_id"] == "alice" and meta["vault"] == "default"
    assert meta["source_kind"] == "message" and meta["speaker"] == "Alice"
    assert meta["version"] == 1 and meta["tags"] == ["chat"]
    assert meta["created_at"] == cubes[0].lifecycle.created_at.isoformat()
    assert meta["valid_from"] == cubes[0].lifecycle.valid_from.isoformat()
    shown = top.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "speaker: Alice" in shown and "source_refs" not in shown
    assert top.node.get_content(metadata_mode=MetadataMode.EMBED) == cubes[0].content

    again = await retriever.aretrieve("Where does my dog like to go?")
    assert [(n.node.node_id, n.score) for n in again] == [(n.node.node_id, n.score) for n in nodes]
    assert MemOSRetriever(mem, "alice", session_id="other").retrieve("dog") == []
    assert retriever.retrieve("   ") == []


def test_memory_short_term_window_and_writes(mem: MemOS) -> None:
    memory = MemOSMemory.from_defaults(mem=mem, user_id="alice", session_id="w1", token_limit=12)
    memory.put(ChatMessage(role="system", content="You are a gardener's assistant."))
    memory.put_messages(
        [
            ChatMessage(role="user", content="I grow tomatoes on my balcony in Lisbon."),
            ChatMessage(role="assistant", content=""),
            ChatMessage(role="assistant", content="", blocks=[ToolCallBlock(tool_name="t")]),
            ChatMessage(role="tool", content="42 degrees"),
            ChatMessage(role="assistant", content="Tomatoes love sun."),
        ]
    )
    stored = mem.list(user_id="alice", session_id="w1")
    assert {c.content: c.provenance.source_refs for c in stored} == {
        "I grow tomatoes on my balcony in Lisbon.": ['["default","alice","w1"]#1'],
        "Tomatoes love sun.": ['["default","alice","w1"]#5'],
    }
    memory.put(ChatMessage(role="user", content="Which plants need the most water?"))
    assert len(memory.get_all()) == 7

    # over the limit the oldest messages go; the window never opens on a reply or tool result
    window = memory.get(input="What do I grow?")
    assert [m.role for m in window] == ["system", "user"]
    assert window[1].content == "Which plants need the most water?"
    # the only system message is the recall, now first: nothing else fit
    assert window[0].content.startswith("Long-term memories")
    assert "I grow tomatoes" in window[0].content

    # with room, recall merges into the history's own system message
    memory.token_limit = 3000
    window = memory.get(input="What do I grow?")
    assert [m.role for m in window].count("system") == 1
    assert window[0].content.startswith("You are a gardener's assistant.")
    assert "Long-term memories" not in memory.get_all()[0].content  # stored message untouched
    # everything recallable is in the window already, so nothing is added
    assert "Long-term memories" not in window[0].content

    memory.reset()
    assert memory.get_all() == []
    assert len(mem.list(user_id="alice", session_id="w1")) == 3  # long-term stays
    memory.set([ChatMessage(role="user", content="A history set from elsewhere.")])
    assert len(mem.list(user_id="alice", session_id="w1")) == 3  # set does not write
    assert "I grow tomatoes" in system_text(memory.get())


async def test_memory_async_twins_and_shared_chat_store(mem: MemOS) -> None:
    memory = MemOSMemory.from_defaults(mem=mem, user_id="alice", session_id="z1", agent_id="bot")
    await memory.aput(
        ChatMessage(
            role="user", content="My favourite city is Kyoto.", additional_kwargs={"name": "Alice"}
        )
    )
    await memory.aput_messages([ChatMessage(role="assistant", content="Kyoto is beautiful.")])
    cubes = await mem.alist(user_id="alice")
    assert {(c.provenance.speaker, c.provenance.role, c.scope.agent_id) for c in cubes} == {
        ("Alice", "user", "bot"),
        (None, "assistant", "bot"),
    }
    assert len(await memory.aget_all()) == 2

    # a second memory on the same chat store and key continues the same short-term history
    twin = MemOSMemory.from_defaults(
        mem=mem, user_id="alice", chat_store=memory.chat_store, chat_store_key=memory.chat_store_key
    )
    assert memory.chat_store_key == '["default","alice","z1"]'
    assert [m.content for m in await twin.aget_all()] == [
        "My favourite city is Kyoto.",
        "Kyoto is beautiful.",
    ]

    await memory.areset()
    assert await memory.aget_all() == []
    await memory.aset([ChatMessage(role="user", content="Where should I travel?")])
    messages = await memory.aget()
    assert "Alice: My favourite city is Kyoto." in system_text(messages)
    assert messages[-1].content == "Where should I travel?"
    assert len(await mem.alist(user_id="alice")) == 2
