"""`team`: a researcher and a writer that share findings through a MemStore channel while
each keeps its own private memory.

    researcher_recall -> researcher -> researcher_remember -> publish
        -> writer_inbox -> writer_recall -> writer -> writer_remember

Private memory lives in vault `team:<name>` under each agent's own id, so neither agent can
recall the other's notes; only what the researcher publishes reaches the writer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.graph import END, START, MessagesState, StateGraph
from memos_agents.graphs.common import agent_step, built_once, default_chat_model, server_memos
from memos_agents.langgraph.nodes import publish_node, recall_node, remember_node, subscribe_node

from memos_agents.mos import MemOS

RESEARCHER_PROMPT = "You are a researcher. State the key findings for the task, one per line."
WRITER_PROMPT = "You are a writer. Write a short answer to the task from the findings you received."


class TeamState(MessagesState):
    memories: list[dict[str, Any]]
    findings: list[dict[str, Any]]


def build_team(
    mem: MemOS,
    researcher_model: BaseChatModel,
    writer_model: BaseChatModel | None = None,
    *,
    team: str = "default",
    checkpointer: Any = None,
) -> Any:
    """Compile the two-agent team over `mem`; both agents may share one model."""
    vault = f"team:{team}"
    channel = f"team.{team}.findings"
    writer_model = writer_model or researcher_model
    researcher, writer = "researcher", "writer"

    def split_lines(state: dict[str, Any]) -> list[str]:
        last = state["messages"][-1]
        return [ln.strip(" -*") for ln in str(last.content).splitlines() if ln.strip(" -*")]

    steps = [
        ("researcher_recall", recall_node(mem, user_id=researcher, vault=vault)),
        ("researcher", agent_step(researcher_model, RESEARCHER_PROMPT, name=researcher)),
        (
            "researcher_remember",
            remember_node(mem, user_id=researcher, agent_id=researcher, vault=vault),
        ),
        (
            "publish",
            publish_node(
                mem,
                channel,
                user_id=researcher,
                agent_id=researcher,
                vault=vault,
                select=split_lines,
            ),
        ),
        (
            "writer_inbox",
            subscribe_node(mem, channel, subscriber=f"agent:{writer}", state_key="findings"),
        ),
        ("writer_recall", recall_node(mem, user_id=writer, vault=vault)),
        (
            "writer",
            agent_step(
                writer_model, WRITER_PROMPT, name=writer, context_keys=("memories", "findings")
            ),
        ),
        ("writer_remember", remember_node(mem, user_id=writer, agent_id=writer, vault=vault)),
    ]
    b = StateGraph(TeamState)
    b.add_sequence(steps)
    b.add_edge(START, steps[0][0])
    b.add_edge(steps[-1][0], END)
    return b.compile(checkpointer=checkpointer, name="team")


@built_once
def served_graph() -> Any:
    """The graph the server runs, built once per process: over `server_memos()`, with the chat
    model of `MEMOS_CHAT_MODEL` or else the local model process."""
    mem = server_memos()
    return build_team(mem, default_chat_model(mem))


async def make_graph() -> Any:
    """Entry point for `langgraph.json`; the server calls it for every request, so the (blocking)
    first build runs in a worker thread, off the event loop."""
    return await asyncio.to_thread(served_graph)
