"""Recipe 1: a LangGraph agent that remembers a user across sessions.

The ready-made `memory_agent` graph recalls before it answers and remembers after. Two separate
runs (two threads, and a fresh MemOS each time, as two processes would be) share what the user
said, because memory lives in MemOS, not in the graph's checkpointer. The chat model is the
packaged SmolLM2 in the local model process; pass any LangChain chat model instead.

    python cookbook/01_langgraph_agent_remembers.py [--dir ./.memos-cookbook]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from langchain_core.messages import HumanMessage
from memos_agents.graphs.memory_agent import build_memory_agent

from memos_agents import MemOS


def main(data_dir: Path) -> None:
    user = {"configurable": {"user_id": "alice", "thread_id": "monday"}}
    with MemOS.open(data_dir) as mem:
        agent = build_memory_agent(mem, mem.chat_model(max_tokens=40))
        agent.invoke({"messages": [HumanMessage("Hi! I'm Alice. My dog is called Miso.")]}, user)

    user = {"configurable": {"user_id": "alice", "thread_id": "friday"}}
    with MemOS.open(data_dir) as mem:  # a new session: nothing carried over but MemOS
        agent = build_memory_agent(mem, mem.chat_model(max_tokens=40))
        out = agent.invoke({"messages": [HumanMessage("What is my dog called?")]}, user)
        print("recalled:", [m["content"] for m in out["memories"]])
        print("answer:  ", out["messages"][-1].content)
        assert any("Miso" in m["content"] for m in out["memories"])
        mem.stop_model()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(".memos-cookbook"))
    main(ap.parse_args().dir)
