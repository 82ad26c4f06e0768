"""A short tour of MemOS on the embedded defaults (`make demo` / `memos-agents demo`)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from .mos import MemOS

CONVERSATION = [
    {
        "role": "user",
        "speaker": "Alice",
        "content": "I moved to Lisbon in May; my dog is called Miso.",
    },
    {"role": "assistant", "content": "Lisbon in spring sounds lovely. How is Miso settling in?"},
    {
        "role": "user",
        "speaker": "Alice",
        "content": "Miso loves the beach at Cascais. I work at a bakery.",
    },
    {
        "role": "user",
        "speaker": "Alice",
        "content": "My sister Clara is visiting from Berlin next week.",
    },
]


def run(data_dir: Path, console: Console) -> None:
    t0 = time.perf_counter()
    with MemOS.open(data_dir) as mem:
        console.rule(f"MemOS at {data_dir}")
        cubes = mem.add(CONVERSATION, user_id="alice", session_id="s1")
        mem.add("I live in Oslo and I am allergic to cats.", user_id="bob", session_id="b1")
        console.print(f"added {len(cubes)} memories for alice, 1 for bob")
        for q in ("where does alice live?", "what is the dog's name?", "who is visiting?"):
            hits = mem.search(q, user_id="alice", k=2)
            console.print(f"[bold]{q}[/bold]")
            for h in hits:
                console.print(f"  {h.score:.3f}  {h.cube.content}")
        hits = mem.search("where does bob live?", user_id="alice", k=5)
        assert all(h.cube.scope.user_id == "alice" for h in hits)
        console.print("bob's memories never show up in alice's search: scope holds")
        new = mem.update(cubes[0].id, "I moved to Porto in June; my dog is called Miso.")
        console.print(f"updated {new.id} to version {new.lifecycle.version}")
        for rec in mem.history(cubes[0].id):
            console.print(
                f"  v{rec.version} {rec.op:<6} by {rec.changed_by} at "
                f"{rec.changed_at:%H:%M:%S}: {rec.cube.content}"
            )
        mem.delete(cubes[0].id)
        hits = mem.search("where does alice live?", user_id="alice", k=3)
        console.print(f"after delete, top hit: {hits[0].cube.content if hits else '-'}")
        stats = mem.stats()
        console.print(
            f"stats: {stats['cubes']} cubes, {stats['versions']} versions, "
            f"{stats['vectors']} vectors, graph {stats['graph']}"
        )
    console.print(f"done in {time.perf_counter() - t0:.1f}s")
