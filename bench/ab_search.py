"""Search latency of retrieval settings, side by side in one process.

Opens a kept `bench/ingest_search.py --data-dir DIR` vault and asks the first `--queries`
LoCoMo dev questions of its user, each under every setting in turn (the settings alternate
query by query, so the machine's noise falls on all of them alike). Each setting is a JSON
object of `RetrievalConfig` fields; `{}` is the default.

    python bench/ingest_search.py --sizes 10000 --data-dir /tmp/b1e4
    python bench/ab_search.py /tmp/b1e4 '{}' '{"keyword_expansion": 0}' '{"graph_hop": "related"}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from ingest_search import LOCOMO, USER

from memos_agents import MemOS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path, help="a kept bench/ingest_search.py --data-dir")
    ap.add_argument("settings", nargs="+", help="JSON objects of RetrievalConfig fields")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    mem = MemOS.open(args.data_dir, graph_idle_timeout=120)
    try:
        base = mem.vault.router.config
        cfgs = [base.model_copy(update=json.loads(s)) for s in args.settings]
        samples = json.loads(LOCOMO.read_text(encoding="utf-8"))
        qs = [qa["question"] for s in samples for qa in s["qa"]][: args.queries]
        for cfg in cfgs:  # untimed warm-up of each setting
            mem.vault.router.config = cfg
            for q in qs[:5]:
                mem.search(q, user_id=USER, k=args.k)
        took: list[list[float]] = [[] for _ in cfgs]
        for q in qs:
            for i, cfg in enumerate(cfgs):
                mem.vault.router.config = cfg
                t0 = time.perf_counter()
                mem.search(q, user_id=USER, k=args.k)
                took[i].append(1000 * (time.perf_counter() - t0))
    finally:
        mem.close()
    for setting, ms in zip(args.settings, took, strict=True):
        ms.sort()
        print(f"{setting}: hybrid p50 {statistics.median(ms):.1f} ms, "
              f"p95 {ms[int(0.95 * len(ms))]:.1f} ms ({len(ms)} queries)")


if __name__ == "__main__":
    main()
