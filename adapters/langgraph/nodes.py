"""Node factories that give any LangGraph graph memory: recall, remember, publish, subscribe.

Each node finds the user (and session) from, in order: the factory argument, then
`config["configurable"]["user_id"]` / `["thread_id"]`, then the run's context
(`context={"user_id": ...}`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig

from memos_agents.errors import InvalidInput
from memos_agents.mos import MemOS

Node = Callable[[dict[str, Any], RunnableConfig], dict[str, Any]]


def _from_context(key: str) -> Any:
    try:
        from langgraph.config import get_runtime
    except ImportError:  # pragma: no cover - older langgraph
        return None
    try:
        ctx = get_runtime().context
    except RuntimeError:
        return None
    if isinstance(ctx, dict):
        return ctx.get(key)
    return getattr(ctx, key, None)


def resolve(config: RunnableConfig | None, key: str, given: str | None = None) -> str | None:
    """A run-scoped id: given explicitly, in `configurable`, or in the run's context."""
    if given is not None:
        return given
    value = ((config or {}).get("configurable") or {}).get(key)
    if value is None and key == "session_id":
        value = ((config or {}).get("configurable") or {}).get("thread_id")
    return value if value is not None else _from_context(key)


def require_user(config: RunnableConfig | None, given: str | None = None) -> str:
    user = resolve(config, "user_id", given)
    if not user:
        raise InvalidInput(
            "no user_id: pass user_id= to the node factory, or invoke the graph with "
            "config={'configurable': {'user_id': ...}} or context={'user_id': ...}"
        )
    return str(user)


def last_message(messages: Sequence[Any], kind: type[BaseMessage]) -> BaseMessage | None:
    for m in reversed(messages):
        if isinstance(m, kind):
            return m
    return None


def message_text(m: BaseMessage) -> str:
    if isinstance(m.content, str):
        return m.content
    return "\n".join(
        b if isinstance(b, str) else str(b.get("text", ""))
        for b in m.content
        if isinstance(b, str) or (isinstance(b, dict) and b.get("type") == "text")
    )


def format_memories(hits: Sequence[dict[str, Any]]) -> str:
    """The recalled memories as a system prompt block."""
    if not hits:
        return "You have no stored memories about this user yet."
    lines = "\n".join(f"- {h['content']}" for h in hits)
    return f"What you remember about this user (most relevant first):\n{lines}"


def recall_node(
    mem: MemOS,
    *,
    k: int = 5,
    user_id: str | None = None,
    vault: str | None = None,
    state_key: str = "memories",
    min_score: float | None = None,
) -> Node:
    """Search memory with the last user message; put the hits (dicts) into `state[state_key]`."""

    def recall(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        human = last_message(state.get("messages", []), HumanMessage)
        if human is None or not message_text(human).strip():
            return {state_key: []}
        hits = mem.search(
            message_text(human),
            user_id=require_user(config, user_id),
            k=k,
            vault=vault,
            min_score=min_score,
        )
        return {
            state_key: [
                {
                    "id": h.cube.id,
                    "content": h.cube.content,
                    "score": h.score,
                    "source_refs": h.cube.provenance.source_refs,
                }
                for h in hits
            ]
        }

    return recall


def remember_node(
    mem: MemOS,
    *,
    user_id: str | None = None,
    agent_id: str | None = None,
    vault: str | None = None,
    mode: str = "fast",
    include_ai: bool = True,
) -> Node:
    """Write the latest turn (last user message, and the reply after it) through MemReader."""

    def remember(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        messages = state.get("messages", [])
        human = last_message(messages, HumanMessage)
        if human is None:
            return {}
        turn: list[BaseMessage] = [human]
        ai = last_message(messages, AIMessage)
        if include_ai and ai is not None and messages.index(ai) > messages.index(human):
            turn.append(ai)
        turn = [m for m in turn if message_text(m).strip() and not getattr(m, "tool_calls", None)]
        if turn:
            mem.add(
                turn,
                user_id=require_user(config, user_id),
                agent_id=agent_id,
                vault=vault,
                session_id=resolve(config, "session_id"),
                mode=mode,  # type: ignore[arg-type]
            )
        return {}

    return remember


def publish_node(
    mem: MemOS,
    channel: str,
    *,
    agent_id: str,
    user_id: str | None = None,
    vault: str | None = None,
    select: Callable[[dict[str, Any]], str | Sequence[str] | None] | None = None,
) -> Node:
    """Publish to a MemStore channel: by default the last AI message's text."""

    def default_select(state: dict[str, Any]) -> str | None:
        ai = last_message(state.get("messages", []), AIMessage)
        return message_text(ai) if ai is not None else None

    pick = select or default_select

    def publish(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        chosen = pick(state)
        texts = [chosen] if isinstance(chosen, str) else list(chosen or [])
        texts = [t for t in texts if t and t.strip()]
        if texts:
            mem.publish(
                channel,
                texts,
                user_id=require_user(config, user_id),
                agent_id=agent_id,
                vault=vault,
                session_id=resolve(config, "session_id"),
            )
        return {}

    return publish


def subscribe_node(
    mem: MemOS,
    channel: str,
    *,
    subscriber: str,
    state_key: str = "inbox",
    limit: int = 100,
    as_message: bool = False,
) -> Node:
    """Receive what arrived on a channel since the last run, acknowledge it, and put it into
    `state[state_key]` (dicts), or as a system message into `messages` with `as_message`."""
    mem.subscribe(channel, subscriber)

    def subscribe(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        got = mem.poll(channel, subscriber, limit=limit)
        if got:
            mem.ack(channel, subscriber, got[-1].seq)
        items = [
            {"seq": d.seq, "id": d.cube.id, "content": d.cube.content, "from": d.published_by}
            for d in got
        ]
        out: dict[str, Any] = {state_key: items}
        if as_message and items:
            body = "\n".join(f"- ({i['from']}) {i['content']}" for i in items)
            out["messages"] = [SystemMessage(content=f"New on channel {channel}:\n{body}")]
        return out

    return subscribe


def schedule_node(
    mem: MemOS,
    *,
    k: int = 5,
    user_id: str | None = None,
    vault: str | None = None,
    state_key: str = "plan",
) -> Node:
    """Ask MemScheduler which memory forms to load for the task (the last user message) and
    why; puts the plan (a dict: ordered steps with reasons, notes) into `state[state_key]`."""

    def schedule(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        human = last_message(state.get("messages", []), HumanMessage)
        if human is None or not message_text(human).strip():
            return {state_key: None}
        plan = mem.scheduler.plan(
            message_text(human), user_id=require_user(config, user_id), vault=vault, k=k
        )
        return {state_key: plan.model_dump(mode="json")}

    return schedule
