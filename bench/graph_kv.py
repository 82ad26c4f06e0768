"""A 10-turn LangGraph conversation over ~2k tokens of one user's memory: time to first token per
turn with the memories as prompt text vs served from the scheduler's activation (KV) memory.

Two graphs over the same MemOS, the same model process (the packaged SmolLM2-135M, float32,
CPU) and the same questions, run turn by turn, interleaved (one checkpointer thread each, so the
conversation history grows the same way in both):

- kv:   `recall_node` -> `agent_step(model, None, mem=mem)`: the step generates through
        `mem.generate` with the scheduler's plan, which picks the hot KV cache the scheduler's
        promote job built of the user's memories;
- text: a recall of the same memories, in the cache's order -> `agent_step(..., activation=False)`:
        `mem.generate(plan=False, memories=...)`, the same prompt as text.

TTFT is the model client's (request sent to first token: the HTTP round trip, the blob check and
fork, the prefill of what is not cached); `turn` is the whole graph step (recall, plan, catalog
reads, generation of up to `--tokens` greedy tokens). Greedy replies are compared turn by turn.

    python bench/graph_kv.py              # 10 turns, ~2k tokens of memory
    python bench/graph_kv.py --turns 3    # quicker

Results go to bench/results/graph_kv.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

USER = "alice"
ASKS = [
    "Where does {} live?",
    "What does {} work as?",
    "What is the name of {}'s pet?",
    "What kind of pet does {} keep?",
    "On which day does {} do their hobby?",
]


def questions(texts: list[str], n: int) -> list[str]:
    """`n` questions about the people the memories are about."""
    names = [" ".join(t.split()[:2]) for t in texts]
    return [ASKS[i % len(ASKS)].format(names[(i * 7) % len(names)]) for i in range(n)]


def graphs(mem: Any, model: Any, ids: list[str]) -> tuple[Any, Any]:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import START, StateGraph
    from memos_agents.graphs.common import agent_step
    from memos_agents.graphs.memory_agent import MemoryAgentState
    from memos_agents.langgraph.nodes import recall_node

    contents = {i: mem.get(i).content for i in ids}

    def same_memories(state: dict[str, Any]) -> dict[str, Any]:
        return {"memories": [{"id": i, "content": contents[i]} for i in ids]}

    built = []
    for recall, step in (
        (recall_node(mem), agent_step(model, None, mem=mem)),
        (same_memories, agent_step(model, None, mem=mem, activation=False)),
    ):
        g = StateGraph(MemoryAgentState)
        g.add_sequence([("recall", recall), ("respond", step)])
        g.add_edge(START, "recall")
        built.append(g.compile(checkpointer=InMemorySaver()))
    return built[0], built[1]


def turn(graph: Any, question: str, thread: str) -> dict[str, Any]:
    from langchain_core.messages import HumanMessage

    cfg = {"configurable": {"user_id": USER, "thread_id": thread}}
    t0 = time.perf_counter()
    reply = graph.invoke({"messages": [HumanMessage(question)]}, cfg)["messages"][-1]
    wall = time.perf_counter() - t0
    used = reply.response_metadata["memos"]
    return {
        "ttft_s": used["ttft_s"],
        "turn_s": round(wall, 4),
        "cached_tokens": used["cached_tokens"],
        "prompt_tokens": (reply.usage_metadata or {}).get("input_tokens"),
        "activation": used["activation"],
        "text": reply.content,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from kv_ttft import facts

    from memos_agents import MemOS
    from memos_agents.cube import ActivationMeta

    with tempfile.TemporaryDirectory() as tmp:
        mem = MemOS.open(Path(tmp) / "memos")
        try:
            texts = facts(args.facts)
            ids = [c.id for c in mem.add(texts, user_id=USER)]
            mem.model(threads=args.threads)
            mem.scheduler.promote(USER, ids)
            [job] = mem.scheduler.run_pending()
            if job.state != "done":
                raise RuntimeError(f"promote failed: {job.error}")
            hot = mem.get(job.result["cube_id"])
            meta = ActivationMeta.from_cube(hot)
            kv, text = graphs(mem, mem.chat_model(max_tokens=args.tokens), list(
                hot.provenance.derived_from))
            rows = []
            for n, q in enumerate(questions(texts, args.turns), 1):
                a, b = turn(text, q, "text"), turn(kv, q, "kv")
                rows.append({
                    "turn": n,
                    "question": q,
                    "text": a,
                    "kv": b,
                    "reduction": 1 - b["ttft_s"] / a["ttft_s"],
                    "turn_reduction": 1 - b["turn_s"] / a["turn_s"],
                    "same": a["text"] == b["text"],
                })
                print(f"turn {n}: text {a['ttft_s']:.3f}s kv {b['ttft_s']:.3f}s "
                      f"({-rows[-1]['reduction']:+.1%}) same={rows[-1]['same']}", flush=True)
        finally:
            mem.close()
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "threads": args.threads,
        "load_avg": os.getloadavg()[0],
        "memories": len(texts),
        "memory_tokens": meta.tokens,
        "build_s": meta.build_s,
        "max_tokens": args.tokens,
        "rows": rows,
    }


def markdown(rep: dict[str, Any]) -> str:
    lines = [
        f"{len(rep['rows'])}-turn LangGraph conversation, {rep['memories']} memories "
        f"({rep['memory_tokens']} tokens in the hot KV cache, built by the scheduler's promote job "
        f"in {rep['build_s']:.1f} s), greedy, up to {rep['max_tokens']} tokens a reply; "
        f"{rep['when']}, {rep['threads']} threads, load avg {rep['load_avg']:.1f}.",
        "",
        "| turn | prompt tokens | ttft text | ttft kv | reduction | cached | turn text | turn kv "
        "| turn reduction | same answer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        t, k = r["text"], r["kv"]
        lines.append(
            f"| {r['turn']} | {t['prompt_tokens']} | {t['ttft_s']:.3f} s | {k['ttft_s']:.3f} s | "
            f"{-r['reduction']:+.1%} | {k['cached_tokens']} | {t['turn_s']:.2f} s | "
            f"{k['turn_s']:.2f} s | {-r['turn_reduction']:+.1%} | "
            f"{'yes' if r['same'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--facts", type=int, default=64, help="~31 tokens each: 64 is ~2k tokens")
    ap.add_argument("--tokens", type=int, default=24, help="max tokens a reply")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    rep = run(args)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "graph_kv.json").write_text(json.dumps(rep, indent=2))
    (args.results / "graph_kv.md").write_text(markdown(rep))
    print(markdown(rep))


if __name__ == "__main__":
    main()
