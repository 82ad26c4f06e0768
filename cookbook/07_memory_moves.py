"""Recipe 7: memory moves — plaintext, then activation, then parameter, over one session.

The scheduler's worker runs (`MemOS.open(..., scheduler=1)`: a policy pass every second).
An agent stores a few facts about a user (plaintext) and reads them a few times; the
worker sees them hot and promotes them to a KV cache (activation memory), and generation,
naming no memory, uses the scheduler's plan: the hot cache. Then the facts are stable (one
topic, unchanged), so with `auto_distil` on the worker distils them into a LoRA adapter
(parameter memory), which the next plan picks. Every decision is printed as it is made
(kind, cube ids, reason), and the scheduler's status at the end. Runs the packaged SmolLM2.

    python cookbook/07_memory_moves.py [--dir ./.memos-cookbook] [--steps 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from memos_agents import MemOS

USER = "ines"
FACTS = [
    "Ines keeps a rooftop garden in Lisbon with tomatoes, basil and lemon trees.",
    "Ines waters the rooftop garden every morning before work.",
    "Ines grows her garden tomatoes from seeds her grandmother gave her.",
    "Ines's lemon trees in the garden flowered for the first time this spring.",
    "Ines fights the aphids in her garden with ladybirds, never with pesticide.",
]
READS = [  # what the agent looks up during the session: these make the facts hot
    "What does Ines grow in her garden?",
    "When does Ines water the garden?",
    "How does Ines deal with aphids?",
]
QUESTION = "What does Ines grow on her rooftop garden?"


def short(ids: list[str]) -> str:
    return ", ".join(i[:8] for i in ids[:6]) + (f" (+{len(ids) - 6})" if len(ids) > 6 else "")


class Decisions:
    """Prints the scheduler's decisions (its jobs) once each, as they are queued and done."""

    def __init__(self, mem: MemOS) -> None:
        self.sched = mem.scheduler
        self.seen: dict[str, str] = {}

    def show(self) -> list[dict[str, Any]]:
        jobs = self.sched.status(limit=50)["jobs"]
        for j in reversed(jobs):  # oldest first
            first = j["id"] not in self.seen
            if self.seen.get(j["id"]) == j["state"]:
                continue
            self.seen[j["id"]] = j["state"]
            ids = list(j["params"].get("cube_ids") or [])
            print(f"  [scheduler] {j['kind']:<8} {j['state']:<7} by {j['created_by']}: "
                  f"cubes {short(ids)}")
            if first:
                print(f"              reason: {j['reason']}")
            if j["result"]:
                print(f"              result: {j['result']}")
            if j["error"]:
                print(f"              error:  {j['error']}")
        return jobs

    def wait_for(self, kind: str, timeout: float = 900.0) -> dict[str, Any]:
        """Until a `kind` job is done and nothing is queued or running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.show()
            busy = [j for j in jobs if j["state"] in ("queued", "running")]
            done = [j for j in jobs if j["kind"] == kind and j["state"] == "done"]
            if done and not busy:
                return done[0]
            failed = [j for j in jobs if j["kind"] == kind and j["state"] == "failed"]
            if failed and not busy:
                raise SystemExit(f"the {kind} job failed: {failed[0]['error']}")
            time.sleep(0.5)
        raise SystemExit(f"no {kind} decision within {timeout:.0f}s")


def served(g: Any) -> str:
    forms = [f"parameter {g.parameter[:8]} (adapter {g.adapter})" if g.parameter else None,
             f"activation {g.activation[:8]}" if g.activation else None,
             f"plaintext x{len(g.plaintext)}" if g.plaintext else None]
    return " + ".join(f for f in forms if f) or "the bare model"


def report(label: str, g: Any) -> None:
    print(f"{label}: served by {served(g)}; planned={g.planned} "
          f"TTFT {g.ttft_s:.3f}s cached_tokens={g.cached_tokens}\n  -> {g.text!r}")
    for note in g.notes:
        print(f"  plan: {note}")


def main(data_dir: Path, steps: int) -> None:
    with MemOS.open(data_dir, scheduler=1) as mem:  # the worker: a policy pass every second
        decisions = Decisions(mem)
        # stable = unchanged since now (a real deployment waits days); a short training run
        mem.scheduler.set_policy(hot_min_access=3, stable_after_s=0, distil_steps=steps)

        print("1. plaintext: the agent stores what it learns")
        cubes = mem.add(FACTS, user_id=USER, tags=["garden"])
        print(f"  {len(cubes)} plaintext cubes: {short([c.id for c in cubes])}")

        print("2. the agent reads them during the session; the worker promotes the hot set")
        for _ in range(3):
            for q in READS:
                mem.search(q, user_id=USER, k=3)
        decisions.wait_for("promote")

        print("3. activation: generation names no memory, the scheduler's plan picks the cache")
        hot = mem.generate(QUESTION, user_id=USER, max_tokens=24)
        report("  planned", hot)
        act = mem.get(hot.activation) if hot.activation else None
        if act is not None:
            text = mem.generate(QUESTION, user_id=USER, plan=False, max_tokens=24,
                                memories=[*act.provenance.derived_from, *hot.plaintext])
            print(f"  the same memories as prompt text: TTFT {text.ttft_s:.3f}s "
                  f"cached_tokens={text.cached_tokens} (same reply: {text.text == hot.text})")

        print("4. parameter: the facts are stable; with auto_distil the worker distils them")
        mem.scheduler.set_policy(auto_distil=True)
        done = decisions.wait_for("distil")
        adapter = mem.get(done["result"]["cube_id"])
        print(f"  parameter cube {adapter.id[:8]} v{adapter.lifecycle.version} <- "
              f"{len(adapter.provenance.derived_from)} facts")
        tuned = mem.generate(QUESTION, user_id=USER, max_tokens=24)
        report("  planned", tuned)

        print("5. the scheduler's status")
        status = mem.scheduler.status()
        print(f"  worker running: {status['running']}  jobs: {status['counts']}")
        for key, b in status["budgets"].items():
            print(f"  {key}: {b['cubes']} live, {b['used']} of {b['budget']} bytes")
        for h in status["hot"]:
            print(f"  hot cache {h['cube_id'][:8]} ({h['name']}) of {h['user_id']}: "
                  f"{h['tokens']} tokens from {len(h['sources'])} memories")
        for d in status["decisions"]:
            print(f"  decision: {d['kind']} {d['state']} ({d['by']}) "
                  f"cubes {short(d['cube_ids'])}: {d['reason']}")

        assert hot.planned and hot.activation and hot.cached_tokens > 0
        assert tuned.planned and tuned.parameter == adapter.id and tuned.adapter
        mem.stop_model()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(".memos-cookbook"))
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    main(args.dir, args.steps)
