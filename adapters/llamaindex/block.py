"""`MemOSMemoryBlock`: MemOS as one block of llama-index's own `Memory`.

    memory = Memory.from_defaults(memory_blocks=[MemOSMemoryBlock(mem=mem, user_id="alice")])

On `get`, the block searches the user's memory in the vault (every session and agent) with the
latest user message and returns the `k` best memories not already in the chat history as text,
which `Memory` renders inside `<long_term_memory>` in its system message. The `session_id`
that `Memory` passes to blocks does not narrow the search.

On flush, the messages `Memory` ejects from its short-term queue are written to MemOS like
`MemOSMemory` writes them (user and assistant turns only), in the block's session or, when it
has none, the `Memory`'s session. Only ejected messages reach MemOS: a conversation that never
outgrows `Memory.token_limit * chat_history_token_ratio` stays in `Memory`'s own chat store.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import Field, field_validator
from llama_index.core.memory.memory import BaseMemoryBlock
from llama_index.core.utils import get_tokenizer

from memos_agents.cube import check_name
from memos_agents.mos import MAX_K, MemOS
from memos_agents.reader import Mode

from .memory import ITEM, RECALL_PROMPT, format_recall, last_user_text, memory_turns, message_text


class MemOSMemoryBlock(BaseMemoryBlock[str]):
    """Recall from MemOS into `Memory`, and remember what `Memory` flushes."""

    name: str = Field(default="long_term_memory", description="The block's name (its tag).")
    mem: MemOS = Field(exclude=True, repr=False, description="The MemOS to remember in.")
    user_id: str = Field(description="Whose memory this is; recall never leaves this user.")
    session_id: str | None = Field(default=None, description="Session of the turns written.")
    agent_id: str | None = Field(default=None, description="Agent of the turns written.")
    vault: str | None = Field(default=None, description="MemOS vault; None for the default.")
    k: int = Field(default=5, ge=1, le=MAX_K, description="Memories recalled per `get`.")
    min_score: float | None = Field(default=None, description="Least cosine score recalled.")
    mode: Mode = Field(default="fast", description="MemReader mode for writes.")
    recall_prompt: str = Field(default=RECALL_PROMPT, description="Header of the memories.")

    @field_validator("user_id")
    @classmethod
    def _user(cls, v: str) -> str:
        return check_name(v, "user_id")

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        """The memories most relevant to the latest user message, as text ("" for none)."""
        messages = messages or []
        query = last_user_text(messages)
        if not query.strip():
            return ""
        hits = await self.mem.asearch(
            query,
            user_id=self.user_id,
            k=min(MAX_K, self.k + len(messages)),
            vault=self.vault,
            min_score=self.min_score,
        )
        skip = frozenset(message_text(m) for m in messages)
        return format_recall(hits, k=self.k, header=self.recall_prompt, skip=skip)

    async def _aput(self, messages: list[ChatMessage]) -> None:
        """Write the user and assistant turns among `messages` to MemOS."""
        turns = memory_turns(messages)
        if not turns:
            return
        session = self.session_id or next(
            (s for m in messages if isinstance(s := m.additional_kwargs.get("session_id"), str)),
            None,
        )
        await self.mem.aadd(
            turns,
            user_id=self.user_id,
            session_id=session,
            agent_id=self.agent_id,
            vault=self.vault,
            mode=self.mode,
        )

    async def atruncate(self, content: str, tokens_to_truncate: int) -> str | None:
        """Drop the least relevant memories (the last) until `tokens_to_truncate` are freed."""
        header, *items = content.split(ITEM)
        tokenize = get_tokenizer()
        while items and tokens_to_truncate > 0:
            tokens_to_truncate -= len(tokenize(ITEM + items.pop()))
        return ITEM.join([header, *items]) if items else None
