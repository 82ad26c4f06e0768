"""Recipe 3: two agents sharing findings through a MemStore channel.

A researcher publishes findings to a channel; a writer, in another process or later, polls
what it has not yet acknowledged. Each keeps its own private memory that the other never sees.
Delivery is at-least-once with a durable cursor in the catalog.

    python cookbook/03_agents_share_findings.py [--dir ./.memos-cookbook]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from memos_agents import MemOS


def main(data_dir: Path) -> None:
    with MemOS.open(data_dir) as mem:
        mem.subscribe("lisbon-brief", "agent:writer")
        mem.add("Draft angle: keep it under 200 words.", user_id="writer", vault="team:demo")
        mem.add("Source list is in my notes app.", user_id="researcher", vault="team:demo")
        mem.publish(
            "lisbon-brief",
            ["Lisbon has about 300 sunny days a year.", "Tram 28 runs through Alfama."],
            user_id="researcher",
            agent_id="researcher",
            vault="team:demo",
        )

    with MemOS.open(data_dir) as mem:  # the writer, later
        inbox = mem.poll("lisbon-brief", "agent:writer")
        for d in inbox:
            print(f"#{d.seq} from {d.published_by}: {d.cube.content}")
        mem.ack("lisbon-brief", "agent:writer", inbox[-1].seq)
        assert mem.poll("lisbon-brief", "agent:writer") == []
        private = mem.search("notes app sources", user_id="writer", vault="team:demo", k=5)
        assert all(h.cube.scope.user_id == "writer" for h in private)
        print("writer's own memory:", [h.cube.content for h in private])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(".memos-cookbook"))
    main(ap.parse_args().dir)
