"""`MemOSChatMessageHistory`: a LangChain chat history stored as MemOS cubes.

Every message becomes a plaintext cube of (user_id, session_id), so the same turns are also
searchable long-term memory. `clear()` soft-deletes the session's cubes (history keeps them).
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from memos_agents.cube import MemCube
from memos_agents.mos import MemOS

_PAGE = 1000


def cube_message(cube: MemCube) -> BaseMessage:
    role = cube.provenance.role or "user"
    cls = {"assistant": AIMessage, "system": SystemMessage}.get(role, HumanMessage)
    return cls(content=cube.content, id=cube.id, name=cube.provenance.speaker)


class MemOSChatMessageHistory(BaseChatMessageHistory):
    """Messages of one user's session, oldest first."""

    def __init__(
        self, mem: MemOS, *, user_id: str, session_id: str, vault: str | None = None
    ) -> None:
        self.mem = mem
        self.user_id = user_id
        self.session_id = session_id
        self.vault = vault

    def _cubes(self) -> list[MemCube]:
        out: list[MemCube] = []
        while True:
            page = self.mem.list(
                user_id=self.user_id,
                session_id=self.session_id,
                vault=self.vault,
                limit=_PAGE,
                offset=len(out),
            )
            out += page
            if len(page) < _PAGE:
                return out

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return [cube_message(c) for c in self._cubes()]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        keep = [m for m in messages if isinstance(m.content, str) and m.content.strip()]
        if keep:
            self.mem.add(keep, user_id=self.user_id, session_id=self.session_id, vault=self.vault)

    def clear(self) -> None:
        for cube in self._cubes():
            self.mem.delete(cube.id, user_id=self.user_id)
