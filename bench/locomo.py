"""LoCoMo evidence recall of MemOS retrieval, with BM25 and dense baselines over raw turns.

Each conversation is ingested through the public `MemOS` API (fast mode: one cube per turn,
no LLM; session dates kept as `valid_from`, each turn's `dia_id` kept as provenance). Every
category 1-4 question is asked with `mem.search`; the top-k cubes are mapped back to their
source `dia_id`s, and we report, per category and overall, for k = 1, 5, 10, 20:

    recall@k      |gold & retrieved| / |gold|
    recall_all@k  gold is a subset of retrieved
    tokens@k      mean retrieved tokens per question (WordPiece tokens of the packaged MiniLM)

What counts as retrieved is the provenance of the k returned cubes themselves. The row
"hybrid + window=1" returns the same cubes with one session turn either side as context: its
recall is the same (context is not a retrieved cube) and its tokens include the context.

Baselines in the same run, over the raw turns ("speaker: text"): BM25 (bm25s, its English
stop list, no stemming) and dense MiniLM (the very vectors MemOS stored, exact cosine).

    python bench/locomo.py                 # bench/data/locomo/locomo_dev.json (2 conversations)
    python bench/locomo.py --data locomo10.json --reuse /tmp/locomo-memos  # keep / reuse ingest
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from memos_agents import MemOS  # noqa: E402
from memos_agents.formats import read_locomo  # noqa: E402

LOCOMO = REPO / "bench" / "data" / "locomo" / "locomo_dev.json"
KS = (1, 5, 10, 20)
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")


def questions(sample: dict[str, Any], known: set[str]) -> list[dict[str, Any]]:
    """Category 1-4 questions with normalised evidence ids that exist in the conversation."""
    out = []
    for qa in sample["qa"]:
        if qa.get("category") not in CATEGORIES:
            continue
        gold = set()
        for ev in qa.get("evidence") or []:
            for m in _EVIDENCE.finditer(str(ev)):
                dia = f"D{int(m.group(1))}:{int(m.group(2))}"
                if dia in known:
                    gold.add(dia)
        if gold:
            out.append({"question": qa["question"], "category": qa["category"], "gold": gold})
    return out


class Tally:
    """Recall, recall_all, tokens and latency of one system."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.recall: dict[tuple[int, Any], list[float]] = defaultdict(list)
        self.tokens: dict[int, list[int]] = defaultdict(list)
        self.latency: list[float] = []

    def add(self, cat: int, gold: set[str], ranked: list[tuple[set[str], int]],
            took: float) -> None:
        self.latency.append(took)
        for k in KS:
            got: set[str] = set()
            toks = 0
            for dias, n in ranked[:k]:
                got |= dias
                toks += n
            r = len(gold & got) / len(gold)
            for key in (cat, "all"):
                self.recall[(k, key)].append(r)
                self.recall[(-k, key)].append(float(gold <= got))
            self.tokens[k].append(toks)

    def row(self, key: Any = "all") -> dict[str, Any]:
        out: dict[str, Any] = {"system": self.name}
        for k in KS:
            out[f"r@{k}"] = round(float(np.mean(self.recall[(k, key)])), 3)
            out[f"all@{k}"] = round(float(np.mean(self.recall[(-k, key)])), 3)
            out[f"tok@{k}"] = round(float(np.mean(self.tokens[k])), 1)
        lat = sorted(self.latency)
        out["p50_ms"] = round(1000 * statistics.median(lat), 1)
        out["p95_ms"] = round(1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1)
        out["n"] = len(self.recall[(1, key)])
        return out


def token_counter() -> Callable[[str], int]:
    try:
        from transformers import AutoTokenizer

        from memos_agents.embeddings import packaged_model_path

        tok = AutoTokenizer.from_pretrained(packaged_model_path())
        return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
    except Exception:  # pragma: no cover - no tokenizer: words
        return lambda text: len(text.split())


def shown_path(path: Path) -> str:
    """`path` as recorded in the results: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=LOCOMO,
                    help="LoCoMo file (default: the dev subset in bench/data/locomo)")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="data dir to keep the ingest in (reused when it already holds it)")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/locomo.json")
    ap.add_argument("--limit", type=int, default=0, help="questions per conversation (0: all)")
    ap.add_argument("--embedder", default=None, help="e.g. all-MiniLM-L6-v2-int8 (default exact)")
    args = ap.parse_args()

    samples = json.loads(args.data.read_text(encoding="utf-8"))
    data_dir = args.reuse or Path(tempfile.mkdtemp(prefix="locomo-memos-"))
    fresh = not (data_dir / "catalog.db").exists()
    count_tokens = token_counter()
    mem = MemOS.open(data_dir, embedder=args.embedder, graph_idle_timeout=60)
    mem.search("warm up", user_id="warm-up", k=1)
    systems = {
        name: Tally(name)
        for name in ("MemOS hybrid", "MemOS hybrid + window=1", "MemOS dense",
                     "BM25 (raw turns)", "dense MiniLM (raw turns)")
    }
    ingest: dict[str, Any] = {}
    organisation: dict[str, Any] = {}
    try:
        batches = list(read_locomo(args.data))
        if fresh:
            n_turns = sum(len(b.messages) for b in batches)
            t0 = time.perf_counter()
            for b in batches:
                mem.add(b.messages, user_id=b.user_id, session_id=b.session_id)
            took = time.perf_counter() - t0
            ingest = {"turns": n_turns, "seconds": round(took, 1),
                      "turns_per_s": round(n_turns / took, 1)}
            print(f"ingested {n_turns} turns in {took:.1f} s ({n_turns / took:.0f} turns/s)")
        for sample in samples:
            user = sample["sample_id"]
            cubes = mem.list(user_id=user, limit=100_000)
            dias = {c.id: set(c.provenance.source_refs) for c in cubes}
            ntok = {c.id: count_tokens(c.content) for c in cubes}
            known = {d for s in dias.values() for d in s}
            qs = questions(sample, known)
            if args.limit:
                qs = qs[: args.limit]
            organisation[user] = mem.vault.graph.organisation_counts("default", user)
            superseded = sum(1 for c in mem.list(user_id=user, limit=100_000,
                                                 include_deleted=True)
                             if c.lifecycle.state.value == "superseded")
            organisation[user]["superseded_cubes"] = superseded

            # baselines over the raw turns
            import bm25s

            ids = [c.id for c in cubes]
            texts = [f"{c.provenance.speaker}: {c.content}" if c.provenance.speaker
                     else c.content for c in cubes]
            bm = bm25s.BM25()
            bm.index(bm25s.tokenize(texts, stopwords="en", show_progress=False),
                     show_progress=False)
            vecs = mem.vault.index.embeddings("default", user, ids)
            mat = np.asarray([vecs[i] for i in ids], dtype=np.float32)

            for q in qs:
                cat, gold = q["category"], q["gold"]
                # MemOS hybrid (and the same hits with their session window)
                t0 = time.perf_counter()
                hits = mem.search(q["question"], user_id=user, k=20)
                took = time.perf_counter() - t0
                ranked = [(dias.get(h.cube.id, set()), ntok.get(h.cube.id, 0)) for h in hits]
                systems["MemOS hybrid"].add(cat, gold, ranked, took)
                t0 = time.perf_counter()
                whits = mem.search(q["question"], user_id=user, k=20, window=1)
                took = time.perf_counter() - t0
                ranked_w = [
                    (dias.get(h.cube.id, set()),
                     ntok.get(h.cube.id, 0) + sum(ntok.get(c.id, 0) for c in h.context))
                    for h in whits
                ]
                systems["MemOS hybrid + window=1"].add(cat, gold, ranked_w, took)
                t0 = time.perf_counter()
                dhits = mem.search(q["question"], user_id=user, k=20, mode="dense")
                took = time.perf_counter() - t0
                systems["MemOS dense"].add(
                    cat, gold, [(dias.get(h.cube.id, set()), ntok.get(h.cube.id, 0))
                                for h in dhits], took)
                # BM25
                t0 = time.perf_counter()
                toks = bm25s.tokenize(q["question"], stopwords="en", show_progress=False,
                                      return_ids=False)[0]
                scores = bm.get_scores(toks) if toks else np.zeros(len(ids))
                top = np.argsort(-scores, kind="stable")[:20]
                took = time.perf_counter() - t0
                systems["BM25 (raw turns)"].add(
                    cat, gold, [(dias[ids[i]], ntok[ids[i]]) for i in top], took)
                # dense MiniLM, exact
                t0 = time.perf_counter()
                qv = np.asarray(mem.vault.embedder.embed_query(q["question"]), dtype=np.float32)
                top = np.argsort(-(mat @ qv), kind="stable")[:20]
                took = time.perf_counter() - t0
                systems["dense MiniLM (raw turns)"].add(
                    cat, gold, [(dias[ids[i]], ntok[ids[i]]) for i in top], took)
    finally:
        mem.close()
        if args.reuse is None:
            from memos_agents.graph.falkordb_server import stop_server

            stop_server(data_dir / "graph")
            shutil.rmtree(data_dir, ignore_errors=True)

    rows = {name: t.row() for name, t in systems.items()}
    per_cat = {
        name: {CATEGORIES[c]: t.row(c) for c in CATEGORIES if t.recall.get((1, c))}
        for name, t in systems.items()
    }
    print_tables(rows, per_cat)
    result = {"data": shown_path(args.data), "ingest": ingest, "organisation": organisation,
              "overall": rows, "per_category": per_cat}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(rows, per_cat, ingest), encoding="utf-8")
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}")


def print_tables(rows: dict[str, dict[str, Any]], per_cat: dict[str, Any]) -> None:
    head = f"{'system':<26}" + "".join(f"{'r@' + str(k):>7}" for k in KS) + \
        "".join(f"{'all@' + str(k):>8}" for k in KS) + \
        "".join(f"{'tok@' + str(k):>8}" for k in KS) + f"{'p50ms':>8}{'p95ms':>8}"
    print(f"\noverall (n = {next(iter(rows.values()))['n']} questions)")
    print(head)
    for name, r in rows.items():
        print(f"{name:<26}" + "".join(f"{r[f'r@{k}']:>7.3f}" for k in KS)
              + "".join(f"{r[f'all@{k}']:>8.3f}" for k in KS)
              + "".join(f"{r[f'tok@{k}']:>8.0f}" for k in KS)
              + f"{r['p50_ms']:>8.1f}{r['p95_ms']:>8.1f}")
    print("\nrecall@5 / recall@10 by category")
    cats = list(CATEGORIES.values())
    first = per_cat[next(iter(per_cat))]
    print(f"{'system':<26}" + "".join(f"{c + ' (n=' + str(first[c]['n']) + ')':>24}"
                                      for c in cats if c in first))
    for name, cs in per_cat.items():
        print(f"{name:<26}" + "".join(f"{cs[c]['r@5']:>15.3f} / {cs[c]['r@10']:.3f}"
                                      for c in cats if c in cs))


def markdown(rows: dict[str, dict[str, Any]], per_cat: dict[str, Any],
             ingest: dict[str, Any]) -> str:
    lines = [
        "| system | r@1 | r@5 | r@10 | r@20 | all@5 | all@10 | tok@5 | tok@10 | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['r@1']:.3f} | {r['r@5']:.3f} | {r['r@10']:.3f} | {r['r@20']:.3f} | "
            f"{r['all@5']:.3f} | {r['all@10']:.3f} | {r['tok@5']:.0f} | {r['tok@10']:.0f} | "
            f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} |"
        )
    cats = list(CATEGORIES.values())
    lines += ["", "| system (recall@5 / recall@10) | " + " | ".join(cats) + " |",
              "|---|" + "---|" * len(cats)]
    for name, cs in per_cat.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{cs[c]['r@5']:.3f} / {cs[c]['r@10']:.3f}" if c in cs else "-" for c in cats) + " |")
    if ingest:
        lines += ["", f"Ingest: {ingest['turns']} turns in {ingest['seconds']} s "
                      f"({ingest['turns_per_s']} turns/s, embeddings included)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
