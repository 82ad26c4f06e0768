"""Recipe 5: parameter memory — distil a handful of facts into a LoRA adapter.

`distil` generates training examples from the facts, trains a small LoRA adapter with peft
(bounded steps, a progress bar) and stores it as a versioned parameter cube with lineage to
its sources. The adapter is loaded per request; without it (`plan=False`: only what is named,
else the scheduler's plan may pick the adapter) the base model answers as before.

    python cookbook/05_parameter_memory.py [--dir ./.memos-cookbook] [--steps 30]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from memos_agents import MemOS

FACTS = [
    "Vexa Thorne sails a ship called the Gilded Heron.",
    "The Gilded Heron has three masts and a copper hull.",
    "Vexa Thorne's first mate is a parrot named Quill.",
]


def main(data_dir: Path, steps: int) -> None:
    with MemOS.open(data_dir) as mem:
        cubes = mem.add(FACTS, user_id="lore", tags=["vexa"])
        adapter = mem.distil(cubes, user_id="lore", name="vexa", steps=steps)
        print(
            f"parameter cube {adapter.id} v{adapter.lifecycle.version} <- "
            f"{len(adapter.provenance.derived_from)} facts, adapter at {adapter.content}"
        )
        q = "What ship does Vexa Thorne sail?"
        base = mem.generate(q, user_id="lore", max_tokens=20, plan=False)
        tuned = mem.generate(q, user_id="lore", parameter=adapter, max_tokens=20)
        again = mem.generate(q, user_id="lore", max_tokens=20, plan=False)
        print(f"base model:   {base.text!r}\nwith adapter: {tuned.text!r}")
        assert again.text == base.text  # the adapter is per request
        assert adapter.provenance.derived_from == [c.id for c in cubes]
        mem.stop_model()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(".memos-cookbook"))
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    main(args.dir, args.steps)
