"""LangChain integration: a retriever and a chat message history backed by MemOS."""

from .history import MemOSChatMessageHistory
from .retriever import MemOSRetriever

__all__ = ["MemOSChatMessageHistory", "MemOSRetriever"]
