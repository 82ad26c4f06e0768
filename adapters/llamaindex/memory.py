"""`MemOSMemory`: a llama-index chat memory with MemOS as its long-term memory.

    engine = SimpleChatEngine.from_defaults(llm=llm, memory=MemOSMemory.from_defaults(
        mem=mem, user_id="alice", session_id="s1"))

Two tiers:

- Short-term: the chat history, kept in a llama-index `BaseChatStore` under `chat_store_key`
  (by default an in-process `SimpleChatStore`, keyed `["<vault>","<user_id>","<session_id>"]`,
  compact JSON, so scopes never share a key).
  `get` returns its most recent messages within `token_limit` tokens, trimmed like
  `ChatMemoryBuffer`. It lives as long as its chat store: pass a persistent one (any llama-index
  `BaseChatStore`, e.g. Redis or Postgres) to keep the history across processes. MemOS itself
  only holds the long-term tier.
- Long-term: every user and assistant turn given to `put` / `put_messages` is also written to
  MemOS (`mem.add`, MemReader `mode`, fast by default) in this memory's user, session, agent and
  vault scope, with `source_refs` ["<chat_store_key>#<position in the chat history>"]. Tool and
  function results, system messages, assistant messages that call tools, and empty texts are
  not written. `get` searches the user's whole memory in the vault (every session and agent)
  with `input`, or else the last user message, and puts the `k` best memories not already in
  the returned history into a system message first (merged into the history's own system
  message when it has one). The memories come on top of `token_limit`.

With `activation=True` (a local model: `MemOSLLM` over `mem.chat_model()`), `get` puts the
memories as `mem.chat_request` plans them for the query in the leading system message instead:
the memory block the scheduler's hot KV cache covers, then the other hits not already in the
history (the history's own system text after them), with the request's options
(`additional_kwargs["memos_options"]`: the adapter and the KV cache, which `MemOSLLM` sends) and
what it uses (`additional_kwargs["memos_used"]`). The block is the same prefix turn after turn,
so the model process reuses its KV cache (and the previous turn's prompt while the block stays
the same); `k` and `min_score` are then the plan's.

`set` replaces the short-term history without writing to MemOS (engines call it with histories
they already have), and `reset` clears the short-term history only: what MemOS learned stays
(forget with `mem.delete`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.bridge.pydantic import ConfigDict, Field, field_validator, model_validator
from llama_index.core.llms.llm import LLM
from llama_index.core.memory.chat_memory_buffer import DEFAULT_TOKEN_LIMIT_RATIO
from llama_index.core.memory.types import BaseChatStoreMemory
from llama_index.core.storage.chat_store import BaseChatStore, SimpleChatStore
from llama_index.core.utils import get_tokenizer

from memos_agents.cube import MemCube, SearchHit, check_name
from memos_agents.mos import MAX_K, MemOS
from memos_agents.reader import Mode

if TYPE_CHECKING:
    from memos_agents.model.client import ChatRequest

DEFAULT_TOKEN_LIMIT = 3000
RECALL_PROMPT = "Long-term memories about this user, most relevant first:"
ITEM = "\n- "
OPTIONS = "memos_options"  # additional_kwargs of a memory block: its request options
USED = "memos_used"  # additional_kwargs of a memory block: the cubes its request uses

_ASSISTANT_ROLES = frozenset({MessageRole.ASSISTANT, MessageRole.CHATBOT, MessageRole.MODEL})


def message_text(message: ChatMessage) -> str:
    """The text blocks of a message, joined by newlines."""
    return "\n".join(b.text for b in message.blocks if isinstance(b, TextBlock))


def last_user_text(messages: Sequence[ChatMessage]) -> str:
    """The text of the last user message, or "" when there is none."""
    for m in reversed(messages):
        if m.role == MessageRole.USER:
            return message_text(m)
    return ""


def memory_turns(
    messages: Sequence[ChatMessage], refs: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The user and assistant turns worth remembering, as `MemOS.add` message dicts; a message's
    `additional_kwargs["name"]` becomes the speaker, `refs[i]` the id of `messages[i]`."""
    turns = []
    for i, m in enumerate(messages):
        text = message_text(m)
        calls_tools = m.additional_kwargs.get("tool_calls") or any(
            isinstance(b, ToolCallBlock) for b in m.blocks
        )
        if m.role == MessageRole.USER:
            role = "user"
        elif m.role in _ASSISTANT_ROLES and not calls_tools:
            role = "assistant"
        else:
            continue
        if not text.strip():
            continue
        turn: dict[str, Any] = {"role": role, "content": text}
        name = m.additional_kwargs.get("name")
        if isinstance(name, str) and name.strip():
            turn["speaker"] = name
        if refs is not None:
            turn["id"] = refs[i]
        turns.append(turn)
    return turns


def _describe(cube: MemCube) -> str:
    when = (cube.lifecycle.valid_from or cube.lifecycle.created_at).date().isoformat()
    who = cube.provenance.speaker or cube.provenance.role or cube.provenance.source_kind.value
    return f"[{when}] {who}: " + cube.content.replace("\n", "\n  ")


def format_recall(
    hits: Sequence[SearchHit],
    *,
    k: int,
    header: str = RECALL_PROMPT,
    skip: frozenset[str] = frozenset(),
) -> str:
    """The best `k` hits whose content is not in `skip`, one per line under `header`; "" if none."""
    items = [_describe(h.cube) for h in hits if h.cube.content not in skip][:k]
    return ITEM.join([header, *items]) if items else ""


def history_key(values: dict[str, Any]) -> str:
    """The default chat store key: the vault (the MemOS default when none is given), user and
    session as a compact JSON list, so no two scopes share a key (user "a/b" + session "c" is
    not user "a" + session "b/c", nor the same user in another vault)."""
    vault = values.get("vault")
    mem = values.get("mem")
    if vault is None and mem is not None:
        vault = mem.config.vault
    parts = [p for p in (vault, values.get("user_id"), values.get("session_id")) if p is not None]
    return json.dumps(parts, ensure_ascii=False, separators=(",", ":"))


class MemOSMemory(BaseChatStoreMemory):
    """Chat history in a token-limited buffer, with recall from and writes to MemOS."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    mem: MemOS = Field(exclude=True, repr=False, description="The MemOS to remember in.")
    user_id: str = Field(description="Whose memory this is; recall never leaves this user.")
    session_id: str | None = Field(default=None, description="Session of the turns written.")
    agent_id: str | None = Field(default=None, description="Agent of the turns written.")
    vault: str | None = Field(default=None, description="MemOS vault; None for the default.")
    k: int = Field(default=5, ge=1, le=MAX_K, description="Memories recalled per `get`.")
    min_score: float | None = Field(default=None, description="Least cosine score recalled.")
    mode: Mode = Field(default="fast", description="MemReader mode for writes.")
    token_limit: int = Field(default=DEFAULT_TOKEN_LIMIT, ge=1, description="History budget.")
    recall_prompt: str = Field(default=RECALL_PROMPT, description="Header of the memories.")
    activation: bool = Field(default=False, description="Memories as the local model's plan.")
    tokenizer_fn: Callable[[str], list] = Field(default_factory=get_tokenizer, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _default_key(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("chat_store_key") is None:
            values = {**values, "chat_store_key": history_key(values)}
        return values

    @field_validator("user_id")
    @classmethod
    def _user(cls, v: str) -> str:
        return check_name(v, "user_id")

    @classmethod
    def class_name(cls) -> str:
        return "MemOSMemory"

    @classmethod
    def from_defaults(  # type: ignore[override]
        cls,
        chat_history: list[ChatMessage] | None = None,
        llm: LLM | None = None,
        *,
        mem: MemOS,
        user_id: str,
        session_id: str | None = None,
        agent_id: str | None = None,
        vault: str | None = None,
        k: int = 5,
        token_limit: int | None = None,
        mode: Mode = "fast",
        min_score: float | None = None,
        chat_store: BaseChatStore | None = None,
        chat_store_key: str | None = None,
        tokenizer_fn: Callable[[str], list] | None = None,
        activation: bool = False,
    ) -> MemOSMemory:
        """A memory for `user_id`. `token_limit` defaults to 3/4 of `llm`'s context window, or
        3000 without an `llm`; `chat_history` seeds the short-term history only."""
        if token_limit is None:
            token_limit = (
                int(llm.metadata.context_window * DEFAULT_TOKEN_LIMIT_RATIO)
                if llm is not None
                else DEFAULT_TOKEN_LIMIT
            )
        memory = cls(
            mem=mem,
            user_id=user_id,
            session_id=session_id,
            agent_id=agent_id,
            vault=vault,
            k=k,
            token_limit=token_limit,
            mode=mode,
            min_score=min_score,
            chat_store=chat_store or SimpleChatStore(),
            chat_store_key=chat_store_key,
            tokenizer_fn=tokenizer_fn or get_tokenizer(),
            activation=activation,
        )
        if chat_history is not None:
            memory.set(chat_history)
        return memory

    # reads
    def get(
        self,
        input: str | ChatMessage | None = None,
        initial_token_count: int = 0,
        **kwargs: Any,
    ) -> list[ChatMessage]:
        """The recent history, led by the memories most relevant to `input` (or the last user
        message); `initial_token_count` is what the caller adds to the prompt itself."""
        history = self.get_all()
        window = self._window(history, initial_token_count)
        query = self._query(input, history)
        if self.activation and query:
            return self._with_block(window, self._chat_request(query, window))
        hits = self.mem.search(query, **self._search_args(window)) if query else []
        return self._with_recall(window, hits)

    async def aget(
        self,
        input: str | ChatMessage | None = None,
        initial_token_count: int = 0,
        **kwargs: Any,
    ) -> list[ChatMessage]:
        """Async `get`."""
        history = await self.aget_all()
        window = self._window(history, initial_token_count)
        query = self._query(input, history)
        if self.activation and query:
            chosen = await asyncio.to_thread(self._chat_request, query, window)
            return self._with_block(window, chosen)
        hits = await self.mem.asearch(query, **self._search_args(window)) if query else []
        return self._with_recall(window, hits)

    # writes
    def put(self, message: ChatMessage) -> None:
        """Add a message to the history, and its turn to MemOS."""
        self.put_messages([message])

    async def aput(self, message: ChatMessage) -> None:
        """Async `put`."""
        await self.aput_messages([message])

    def put_messages(self, messages: list[ChatMessage]) -> None:
        """Add messages to the history, and their turns to MemOS in one write."""
        turns = self._turns(messages, len(self.get_all()))
        if turns:
            self.mem.add(turns, **self._write_args())
        for m in messages:
            self.chat_store.add_message(self.chat_store_key, m)

    async def aput_messages(self, messages: list[ChatMessage]) -> None:
        """Async `put_messages`."""
        turns = self._turns(messages, len(await self.aget_all()))
        if turns:
            await self.mem.aadd(turns, **self._write_args())
        for m in messages:
            await self.chat_store.async_add_message(self.chat_store_key, m)

    # helpers
    def _window(self, history: list[ChatMessage], initial_token_count: int) -> list[ChatMessage]:
        """The newest messages within the token limit, not opening on an assistant or tool
        message; the last message alone when even it does not fit."""
        if initial_token_count > self.token_limit:
            raise ValueError("initial token count exceeds the token limit")
        counts = [len(self.tokenizer_fn(message_text(m))) for m in history]
        total = initial_token_count + sum(counts)
        start = 0
        while total > self.token_limit and start < len(history) - 1:
            total -= counts[start]
            start += 1
            while start < len(history) - 1 and history[start].role in (
                MessageRole.ASSISTANT,
                MessageRole.TOOL,
            ):
                total -= counts[start]
                start += 1
        return history[start:]

    @staticmethod
    def _query(input: str | ChatMessage | None, history: list[ChatMessage]) -> str:
        if isinstance(input, ChatMessage):
            input = message_text(input)
        query = input if input else last_user_text(history)
        return query if query.strip() else ""

    def _search_args(self, window: list[ChatMessage]) -> dict[str, Any]:
        # fetch extra hits to make up for those already in the window
        return {
            "user_id": self.user_id,
            "k": min(MAX_K, self.k + len(window)),
            "vault": self.vault,
            "min_score": self.min_score,
        }

    def _with_recall(self, window: list[ChatMessage], hits: list[SearchHit]) -> list[ChatMessage]:
        skip = frozenset(message_text(m) for m in window)
        recall = format_recall(hits, k=self.k, header=self.recall_prompt, skip=skip)
        if not recall:
            return list(window)
        at = next((i for i, m in enumerate(window) if m.role == MessageRole.SYSTEM), None)
        if at is None:
            return [ChatMessage(role=MessageRole.SYSTEM, content=recall), *window]
        system = window[at].model_copy(
            update={"blocks": [*window[at].blocks, TextBlock(text=recall)]}
        )
        return [system, *window[:at], *window[at + 1 :]]

    def _chat_request(self, query: str, window: list[ChatMessage]) -> ChatRequest:
        """The plan's request for `query`, less the memories whose text is already in the
        window (the turns this memory wrote), so the block stays the same turn after turn."""
        seen = [message_text(m) for m in window]
        return self.mem.chat_request(
            query, user_id=self.user_id, vault=self.vault, skip_texts=seen
        )

    @staticmethod
    def _with_block(window: list[ChatMessage], chosen: ChatRequest) -> list[ChatMessage]:
        """The window led by the memory block of `chosen` (the history's own system message
        after it), carrying its request options."""
        own = [b for m in window if m.role == MessageRole.SYSTEM for b in m.blocks]
        block = ChatMessage(
            role=MessageRole.SYSTEM,
            blocks=[TextBlock(text=chosen.prefix), *own],
            additional_kwargs={OPTIONS: chosen.options, USED: chosen.report()},
        )
        return [block, *(m for m in window if m.role != MessageRole.SYSTEM)]

    def _turns(self, messages: list[ChatMessage], start: int) -> list[dict[str, Any]]:
        refs = [f"{self.chat_store_key}#{start + i}" for i in range(len(messages))]
        return memory_turns(messages, refs)

    def _write_args(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "session_id": self.session_id,
            "agent_id": self.agent_id,
            "vault": self.vault,
            "mode": self.mode,
        }
