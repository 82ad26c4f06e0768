"""Recipe 2: a LlamaIndex chat engine with MemOS memory.

`MemOSMemory` keeps the short-term chat history and, on every turn, puts the user's most
relevant long-term memories in front of the LLM; the turns are written to MemOS. A second
engine, built later with a fresh memory object, still knows what the user said. The LLM is
llama-index's `MockLLM` (it echoes its prompt), so you can see exactly what memory sent it;
swap in any llama-index LLM.

    python cookbook/02_llamaindex_chat_engine.py [--dir ./.memos-cookbook]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import MockLLM
from memos_agents.llamaindex import MemOSMemory

from memos_agents import MemOS


def main(data_dir: Path) -> None:
    with MemOS.open(data_dir) as mem:
        memory = MemOSMemory.from_defaults(mem=mem, user_id="bob", session_id="first")
        engine = SimpleChatEngine.from_defaults(llm=MockLLM(), memory=memory)
        engine.chat("I am allergic to peanuts and I love Thai food.")

    with MemOS.open(data_dir) as mem:
        memory = MemOSMemory.from_defaults(mem=mem, user_id="bob", session_id="second")
        engine = SimpleChatEngine.from_defaults(llm=MockLLM(), memory=memory)
        reply = engine.chat("Suggest a dinner for me.")
        print("what the LLM saw (MockLLM echoes it):\n", reply.response)
        assert "peanuts" in reply.response


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(".memos-cookbook"))
    main(ap.parse_args().dir)
