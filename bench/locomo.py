"""LoCoMo evidence recall of MemOS retrieval, its route ablation, and BM25 / dense baselines.

Each conversation is ingested once through the public `MemOS` API (fast mode: one cube per
turn, no LLM; session dates kept as `valid_from`, each turn's `dia_id` kept as provenance).
Every category 1-4 question is then asked of that same ingest under each configuration, through
the public search API (`mem.search(..., routes=[...])` / `mode=`):

    MemOS hybrid              the default (every route, fused)
    MemOS hybrid + window=1   the same hits, one session turn either side as context
    MemOS hybrid - <route>    hybrid's routes but one, fused (one row per hybrid route)
    MemOS hybrid + <route>    hybrid's routes and one opt-in route (one row per such route)
    MemOS <route>             one route alone (one row per route; dense alone is the cosine)

and, over the raw turns ("speaker: text"), BM25 (bm25s, its English stop list, no stemming)
and dense MiniLM (the very vectors MemOS stored, exact cosine). The top-k cubes are mapped back
to their source `dia_id`s; for k = 1, 5, 10, 20, overall, per category, per conversation and per
(conversation, category):

    recall@k      |gold & retrieved| / |gold|
    recall_all@k  gold is a subset of retrieved
    tokens@k      mean retrieved tokens per question (WordPiece tokens of the packaged MiniLM)
    p50 / p95     search latency per question (time.perf_counter around the search call)

Each conversation's first search under each configuration is a warm-up, not timed (the
scope's indexes are built on first use). What counts as retrieved is the provenance of the k
returned cubes themselves ("+ window=1": the context turns count as tokens, not as retrieved
cubes). A route's own contribution is recall@k(hybrid) - recall@k(hybrid - route), paired per
question, with the questions it helped and hurt. The per-conversation rows are the
leave-one-conversation-out reading: with two dev conversations, fold A tunes on the first and
tests on the second, fold B the reverse.

    python bench/locomo.py                 # bench/data/locomo/locomo_dev.json (2 conversations)
    python bench/locomo.py --limit 10 --routes-only --out /tmp/q.json  # quick, no baselines
    python bench/locomo.py --data locomo10.json --reuse /tmp/locomo-memos  # keep / reuse ingest
    python bench/locomo.py --reuse /tmp/locomo-memos --routes-only --only "MemOS hybrid - graph"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from memos_agents import MemOS  # noqa: E402
from memos_agents.formats import read_locomo  # noqa: E402
from memos_agents.retrieval.config import PRESETS, ROUTES  # noqa: E402

LOCOMO = REPO / "bench" / "data" / "locomo" / "locomo_dev.json"
KS = (1, 5, 10, 20)
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")
HYBRID = "MemOS hybrid"
WINDOW = "MemOS hybrid + window=1"
BM25 = "BM25 (raw turns)"
DENSE_RAW = "dense MiniLM (raw turns)"


def configurations(routes_only: bool) -> dict[str, dict[str, Any]]:
    """Name -> the keyword arguments of `mem.search` for every MemOS row: hybrid without each
    of its routes, hybrid with each opt-in route (one not in the preset), each route alone."""
    hybrid = PRESETS["hybrid"]
    out: dict[str, dict[str, Any]] = {HYBRID: {}}
    if not routes_only:
        out[WINDOW] = {"window": 1}
    for r in hybrid:
        out[f"MemOS hybrid - {r}"] = {"routes": [x for x in hybrid if x != r]}
    for r in ROUTES:
        if r not in hybrid:
            out[f"MemOS hybrid + {r}"] = {"routes": [*hybrid, r]}
    for r in ROUTES:
        out[f"MemOS {r}"] = {"routes": [r]}
    return out


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


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Tally:
    """Per question records of one system: recall, recall_all and tokens at each k, latency.

    Every system sees the questions in the same order, so records pair up across tallies."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.records: list[dict[str, Any]] = []

    def add(self, conv: str, cat: int, gold: set[str], ranked: list[tuple[set[str], int]],
            took: float) -> None:
        rec: dict[str, Any] = {"conv": conv, "cat": cat, "ms": 1000 * took,
                               "r": {}, "all": {}, "tok": {}}
        for k in KS:
            got: set[str] = set()
            toks = 0
            for dias, n in ranked[:k]:
                got |= dias
                toks += n
            rec["r"][k] = len(gold & got) / len(gold)
            rec["all"][k] = float(gold <= got)
            rec["tok"][k] = toks
        self.records.append(rec)

    def select(self, conv: str | None = None, cat: int | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records
                if (conv is None or r["conv"] == conv) and (cat is None or r["cat"] == cat)]

    def row(self, conv: str | None = None, cat: int | None = None) -> dict[str, Any] | None:
        recs = self.select(conv, cat)
        if not recs:
            return None
        out: dict[str, Any] = {"system": self.name}
        for k in KS:
            out[f"r@{k}"] = round(float(np.mean([r["r"][k] for r in recs])), 3)
            out[f"all@{k}"] = round(float(np.mean([r["all"][k] for r in recs])), 3)
            out[f"tok@{k}"] = round(float(np.mean([r["tok"][k] for r in recs])), 1)
        lat = sorted(r["ms"] for r in recs)
        out["p50_ms"] = round(statistics.median(lat), 1)
        out["p95_ms"] = round(percentile(lat, 0.95), 1)
        out["n"] = len(recs)
        return out


def contribution(full: Tally, without: Tally, convs: Iterable[str | None],
                 ks: tuple[int, ...] = (5, 10)) -> dict[str, dict[str, Any]]:
    """recall@k(full) - recall@k(without), paired per question, overall / per category, for
    every conversation in `convs` (None: all of them); with the questions helped and hurt."""
    out: dict[str, dict[str, Any]] = {}
    for conv in convs:
        per: dict[str, Any] = {}
        for cat in (None, *CATEGORIES):
            a, b = full.select(conv, cat), without.select(conv, cat)
            if not a:
                continue
            cell: dict[str, Any] = {"n": len(a)}
            for k in ks:
                d = [x["r"][k] - y["r"][k] for x, y in zip(a, b, strict=True)]
                cell[f"d_r@{k}"] = round(float(np.mean(d)), 3)
                cell[f"helped@{k}"] = sum(1 for v in d if v > 1e-9)
                cell[f"hurt@{k}"] = sum(1 for v in d if v < -1e-9)
            per["all" if cat is None else CATEGORIES[cat]] = cell
        out["all" if conv is None else conv] = per
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


def commit() -> str:
    """The checked-out commit, noting local changes to memos_agents/ or this script; for a run
    from an exported tree (`git archive HEAD`), what LOCOMO_COMMIT says."""
    if os.environ.get("LOCOMO_COMMIT"):
        return os.environ["LOCOMO_COMMIT"]
    try:
        head = subprocess.run(["git", "-C", str(REPO), "log", "--oneline", "-1"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                "memos_agents", "bench/locomo.py"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" (+ uncommitted changes)" if dirty else "")
    except Exception:  # pragma: no cover - not a git checkout
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=LOCOMO,
                    help="LoCoMo file (default: the dev subset in bench/data/locomo)")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="data dir to keep the ingest in (reused when it already holds it)")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/locomo.json")
    ap.add_argument("--limit", type=int, default=0, help="questions per conversation (0: all)")
    ap.add_argument("--embedder", default=None, help="e.g. all-MiniLM-L6-v2-int8 (default exact)")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME",
                    help="only these MemOS rows besides hybrid, e.g. 'MemOS hybrid - graph'")
    ap.add_argument("--routes-only", action="store_true",
                    help="only the MemOS route configurations (no raw-turn baselines, no window)")
    args = ap.parse_args()

    samples = json.loads(args.data.read_text(encoding="utf-8"))
    data_dir = args.reuse or Path(tempfile.mkdtemp(prefix="locomo-memos-"))
    fresh = not (data_dir / "catalog.db").exists()
    count_tokens = token_counter()
    configs = configurations(args.routes_only)
    if args.only:
        configs = {n: kw for n, kw in configs.items() if n == HYBRID or n in args.only}
    mem = MemOS.open(data_dir, embedder=args.embedder, graph_idle_timeout=60)
    mem.search("warm up", user_id="warm-up", k=1)
    names = list(configs) + ([] if args.routes_only else [BM25, DENSE_RAW])
    systems = {name: Tally(name) for name in names}
    ingest: dict[str, Any] = {}
    organisation: dict[str, Any] = {}
    convs: list[str] = []
    try:
        batches = list(read_locomo(args.data))
        if fresh:
            n_turns = sum(len(b.messages) for b in batches)
            t0 = time.perf_counter()
            for b in batches:
                mem.add(b.messages, user_id=b.user_id, session_id=b.session_id)
            mem.vault.operator.flush()
            took = time.perf_counter() - t0
            ingest = {"turns": n_turns, "seconds": round(took, 1),
                      "turns_per_s": round(n_turns / took, 1)}
            print(f"ingested {n_turns} turns in {took:.1f} s ({n_turns / took:.0f} turns/s)")
        for sample in samples:
            user = sample["sample_id"]
            convs.append(user)
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
            organisation[user]["questions"] = len(qs)
            print(f"{user}: {len(cubes)} cubes, {len(qs)} questions", flush=True)

            baseline = None if args.routes_only else raw_baselines(mem, user, cubes)
            # one untimed search per configuration first: the scope's indexes are built on
            # first use, which is not what a search costs
            for kw in configs.values():
                mem.search("warm up", user_id=user, k=20, **kw)
            for q in qs:
                cat, gold = q["category"], q["gold"]
                # every MemOS configuration, in turn, over the same ingest
                for name, kw in configs.items():
                    t0 = time.perf_counter()
                    hits = mem.search(q["question"], user_id=user, k=20, **kw)
                    took = time.perf_counter() - t0
                    ranked = [
                        (dias.get(h.cube.id, set()),
                         ntok.get(h.cube.id, 0) + sum(ntok.get(c.id, 0) for c in h.context))
                        for h in hits
                    ]
                    systems[name].add(user, cat, gold, ranked, took)
                if baseline is not None:
                    for name, rank in baseline.items():
                        t0 = time.perf_counter()
                        top = rank(q["question"])
                        took = time.perf_counter() - t0
                        systems[name].add(user, cat, gold,
                                          [(dias[i], ntok[i]) for i in top], took)
    finally:
        mem.close()
        if args.reuse is None:
            from memos_agents.graph.falkordb_server import stop_server

            stop_server(data_dir / "graph")
            shutil.rmtree(data_dir, ignore_errors=True)

    result = summarise(systems, convs)
    result = {"data": shown_path(args.data), "commit": commit(), "limit": args.limit,
              "embedder": args.embedder or "all-MiniLM-L6-v2",
              "configurations": {n: kw or {"routes": list(PRESETS["hybrid"])}
                                 for n, kw in configs.items()},
              "ingest": ingest, "organisation": organisation, **result}
    print_tables(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}")


def raw_baselines(mem: MemOS, user: str,
                  cubes: list[Any]) -> dict[str, Callable[[str], list[str]]]:
    """BM25 and exact dense MiniLM over the raw turns: name -> question -> the top-20 ids."""
    import bm25s

    ids = [c.id for c in cubes]
    texts = [f"{c.provenance.speaker}: {c.content}" if c.provenance.speaker else c.content
             for c in cubes]
    bm = bm25s.BM25()
    bm.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    vecs = mem.vault.index.embeddings("default", user, ids)
    mat = np.asarray([vecs[i] for i in ids], dtype=np.float32)

    def bm25_top(question: str) -> list[str]:
        toks = bm25s.tokenize(question, stopwords="en", show_progress=False,
                              return_ids=False)[0]
        scores = bm.get_scores(toks) if toks else np.zeros(len(ids))
        return [ids[i] for i in np.argsort(-scores, kind="stable")[:20]]

    def dense_top(question: str) -> list[str]:
        qv = np.asarray(mem.vault.embedder.embed_query(question), dtype=np.float32)
        return [ids[i] for i in np.argsort(-(mat @ qv), kind="stable")[:20]]

    return {BM25: bm25_top, DENSE_RAW: dense_top}


def summarise(systems: dict[str, Tally], convs: list[str]) -> dict[str, Any]:
    """Overall, per category, per conversation and per (conversation, category) rows, and each
    route's own contribution (hybrid minus hybrid without it)."""
    overall = {n: t.row() for n, t in systems.items()}
    per_cat = {n: {CATEGORIES[c]: r for c in CATEGORIES if (r := t.row(cat=c))}
               for n, t in systems.items()}
    per_conv = {conv: {n: t.row(conv=conv) for n, t in systems.items()} for conv in convs}
    per_conv_cat = {
        conv: {n: {CATEGORIES[c]: r for c in CATEGORIES if (r := t.row(conv=conv, cat=c))}
               for n, t in systems.items()}
        for conv in convs
    }
    contrib = {
        r: contribution(systems[HYBRID], systems[f"MemOS hybrid - {r}"], [None, *convs])
        for r in ROUTES if f"MemOS hybrid - {r}" in systems
    }
    return {"overall": overall, "per_category": per_cat, "per_conversation": per_conv,
            "per_conversation_category": per_conv_cat, "contribution": contrib}


def _cats_cell(cs: dict[str, Any], c: str) -> str:
    return f"{cs[c]['r@5']:.3f} / {cs[c]['r@10']:.3f}" if c in cs else "-"


def _delta(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "-"
    return (f"{cell['d_r@5']:+.3f} / {cell['d_r@10']:+.3f} "
            f"(+{cell['helped@10']}/-{cell['hurt@10']})")


def print_tables(res: dict[str, Any]) -> None:
    rows, per_cat = res["overall"], res["per_category"]
    head = f"{'system':<26}" + "".join(f"{'r@' + str(k):>7}" for k in KS) + \
        "".join(f"{'all@' + str(k):>8}" for k in KS) + \
        "".join(f"{'tok@' + str(k):>8}" for k in KS) + f"{'p50ms':>8}{'p95ms':>8}"
    print(f"\noverall (n = {rows[HYBRID]['n']} questions) — {res['commit']}")
    print(head)
    for name, r in rows.items():
        print(f"{name:<26}" + "".join(f"{r[f'r@{k}']:>7.3f}" for k in KS)
              + "".join(f"{r[f'all@{k}']:>8.3f}" for k in KS)
              + "".join(f"{r[f'tok@{k}']:>8.0f}" for k in KS)
              + f"{r['p50_ms']:>8.1f}{r['p95_ms']:>8.1f}")
    cats = list(CATEGORIES.values())
    first = per_cat[HYBRID]
    print("\nrecall@5 / recall@10 by category")
    print(f"{'system':<26}" + "".join(f"{c + ' (n=' + str(first[c]['n']) + ')':>24}"
                                      for c in cats if c in first))
    for name, cs in per_cat.items():
        print(f"{name:<26}" + "".join(f"{_cats_cell(cs, c):>24}" for c in cats))
    convs = list(res["per_conversation"])
    print("\nrecall@5 / recall@10 by conversation (leave-one-conversation-out folds)")
    print(f"{'system':<26}" + "".join(
        f"{c + ' (n=' + str(res['per_conversation'][c][HYBRID]['n']) + ')':>24}"
        for c in convs))
    for name in rows:
        print(f"{name:<26}" + "".join(
            f"{_cats_cell(res['per_conversation'][c], name):>24}" for c in convs))
    for conv in convs:
        print(f"\n{conv}: recall@5 / recall@10 by category")
        print(f"{'system':<26}" + "".join(f"{c:>24}" for c in cats))
        for name, cs in res["per_conversation_category"][conv].items():
            print(f"{name:<26}" + "".join(f"{_cats_cell(cs, c):>24}" for c in cats))
    for route, by_conv in res["contribution"].items():
        print(f"\n{route} route's own contribution: hybrid - (hybrid - {route}), "
              "d r@5 / d r@10 (questions helped / hurt at 10)")
        print(f"{'':<12}" + "".join(f"{c:>28}" for c in ("all", *cats)))
        for conv, per in by_conv.items():
            print(f"{conv:<12}" + "".join(f"{_delta(per.get(c)):>28}" for c in ("all", *cats)))


def markdown(res: dict[str, Any]) -> str:
    rows, per_cat = res["overall"], res["per_category"]
    convs = list(res["per_conversation"])
    cats = list(CATEGORIES.values())
    lines = [
        f"Commit: `{res['commit']}`; data `{res['data']}`"
        + (f", first {res['limit']} questions per conversation" if res["limit"] else "") + ".",
        "",
        "| system | r@1 | r@5 | r@10 | r@20 | all@5 | all@10 | tok@5 | tok@10 | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['r@1']:.3f} | {r['r@5']:.3f} | {r['r@10']:.3f} | {r['r@20']:.3f} | "
            f"{r['all@5']:.3f} | {r['all@10']:.3f} | {r['tok@5']:.0f} | {r['tok@10']:.0f} | "
            f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} |"
        )
    ns = {c: per_cat[HYBRID][c]["n"] for c in cats if c in per_cat[HYBRID]}
    lines += ["", "| system (recall@5 / recall@10) | "
              + " | ".join(f"{c} (n={ns.get(c, 0)})" for c in cats) + " |",
              "|---|" + "---|" * len(cats)]
    for name, cs in per_cat.items():
        lines.append(f"| {name} | " + " | ".join(_cats_cell(cs, c) for c in cats) + " |")
    pc = res["per_conversation"]
    lines += ["", "Per conversation (recall@5 / recall@10; fold A tunes on the first and tests "
              "on the second, fold B the reverse):", "",
              "| system | " + " | ".join(f"{c} (n={pc[c][HYBRID]['n']})" for c in convs) + " |",
              "|---|" + "---|" * len(convs)]
    for name in rows:
        lines.append(f"| {name} | " + " | ".join(_cats_cell(pc[c], name) for c in convs) + " |")
    pcc = res["per_conversation_category"]
    lines += ["", "Per conversation and category (recall@5 / recall@10):", "",
              "| system | conversation | " + " | ".join(cats) + " |",
              "|---|---|" + "---|" * len(cats)]
    for name in rows:
        for conv in convs:
            lines.append(f"| {name} | {conv} | "
                         + " | ".join(_cats_cell(pcc[conv][name], c) for c in cats) + " |")
    for route, by_conv in res["contribution"].items():
        lines += ["", f"The {route} route's own contribution, hybrid - (hybrid - {route}): "
                  "d recall@5 / d recall@10 (questions helped / hurt at 10):", "",
                  "| | all | " + " | ".join(cats) + " |", "|---|---|" + "---|" * len(cats)]
        for conv, per in by_conv.items():
            lines.append(f"| {conv} | " + " | ".join(_delta(per.get(c))
                                                     for c in ("all", *cats)) + " |")
    ingest = res["ingest"]
    if ingest:
        lines += ["", f"Ingest: {ingest['turns']} turns in {ingest['seconds']} s "
                      f"({ingest['turns_per_s']} turns/s, embeddings and organisation included)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
