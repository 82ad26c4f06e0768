"""Recipe 6: a conversation dataset ingested and queried with `explain`.

Ingests one LoCoMo conversation (CC BY-NC 4.0; session dates kept, each turn's dia_id kept as
provenance) through the public API, then asks a question with `mem.explain`: the intent MemReader
read from it, every retrieval route's candidates, and how they were fused.

    python cookbook/06_locomo_explain.py [--dir ./.memos-cookbook] [--data PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from memos_agents import MemOS
from memos_agents.formats import read_batches

DATA = Path(__file__).resolve().parents[1] / "bench" / "data" / "locomo" / "locomo_dev.json"


def main(data_dir: Path, data: Path) -> None:
    with MemOS.open(data_dir) as mem:
        batches = [b for b in read_batches(data, "locomo") if b.user_id == "conv-26"]
        n = sum(
            len(mem.add(b.messages, user_id=b.user_id, session_id=b.session_id)) for b in batches
        )
        print(f"ingested {n} turns of conv-26")
        result = mem.explain(
            "When did Caroline go to the LGBTQ support group?", user_id="conv-26", k=5
        )
        print(result.explain.model_dump_json(indent=1)[:3000])
        for h in result.hits:
            print(f"{h.score:.3f} {h.cube.provenance.source_refs} {h.cube.content[:80]}")
        assert result.hits and all(h.cube.provenance.source_refs for h in result.hits)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(".memos-cookbook"))
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    main(args.dir, args.data)
