"""Distillation: does a LoRA adapter trained on five facts recall them when asked in phrasings
it was never trained on?

Through the public API, as a user would: `mem.add` five facts, `mem.distil(tag=...)` (the
template examples of `memos_agents.model.examples`), then greedy `mem.generate` for every
held-out question (`examples.probes`: question forms never used in training) before training,
with the adapter, after `mem.unload_parameter` (the base model: its greedy replies and the
scores of the held-out items must equal those before training exactly) and with the adapter
loaded again from disk. A fact counts as recalled when most of its held-out answers contain its
key span. The packaged SmolLM2-135M on CPU.

    python bench/distill.py                  # writes bench/results/distill.{md,json}
    python bench/distill.py --steps 40 --lr 2e-3 --json
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

FACTS = [
    "Zorblat the dragon guards the Crimson Library.",
    "Quillon Marsh brews moonberry tea every Tuesday.",
    "Vexa Thorne sails a ship called the Gilded Heron.",
    "Alice's cat is named Biscuit.",
    "Alice plays the cello on Sundays.",
]
PHASES = ("before", "after", "unloaded", "reloaded")


def answers(mem: Any, probes: list[Any], user: str, max_tokens: int, **kw: Any) -> list[str]:
    """Greedy replies; `plan=False`: no memories the scheduler would pick, only the adapter."""
    return [
        mem.generate(p.question, user_id=user, max_tokens=max_tokens, plan=False, **kw).text
        for p in probes
    ]


def recalled(probes: list[Any], texts: list[str], n_facts: int) -> list[bool]:
    """Per fact: most of its held-out answers contain its key span."""
    hits = [0] * n_facts
    asked = [0] * n_facts
    for p, t in zip(probes, texts, strict=True):
        asked[p.index] += 1
        hits[p.index] += p.key.casefold() in t.casefold()
    return [asked[i] > 0 and 2 * hits[i] > asked[i] for i in range(n_facts)]


def measure(
    mem: Any, facts: list[str], *, steps: int, lr: float, rank: int, max_tokens: int = 24
) -> dict[str, Any]:
    """Train on `facts` through `mem` and answer the held-out questions in every phase."""
    from memos_agents.model.examples import held_out, probes, training_examples

    user = "bench"
    cubes = mem.add(facts, user_id=user, tags=["distill"])
    asked = probes(cubes)
    client = mem.model()
    items = held_out(cubes)
    texts: dict[str, list[str]] = {"before": answers(mem, asked, user, max_tokens)}
    scores_before = [s["nll"] for s in client.score(items)]
    t0 = time.perf_counter()
    p = mem.distil(tag="distill", user_id=user, steps=steps, lr=lr, rank=rank, progress=True)
    train_s = time.perf_counter() - t0
    texts["after"] = answers(mem, asked, user, max_tokens, parameter=p.id)
    mem.unload_parameter(p.id)
    texts["unloaded"] = answers(mem, asked, user, max_tokens)
    scores_unloaded = [s["nll"] for s in client.score(items)]
    texts["reloaded"] = answers(mem, asked, user, max_tokens, parameter=p.id)
    mem.unload_parameter(p.id)
    return {
        "facts": facts,
        "probes": [
            {"fact": x.index, "form": x.form, "question": x.question, "key": x.key} for x in asked
        ],
        "answers": texts,
        "recalled": {ph: recalled(asked, texts[ph], len(facts)) for ph in PHASES},
        "restored_greedy": texts["unloaded"] == texts["before"],
        "restored_scores": scores_unloaded == scores_before,
        "train_s": round(train_s, 2),
        "adapter_train_s": p.metadata.get("seconds"),
        "examples": len(training_examples(cubes)),
        "loss_start": p.metadata.get("loss_start"),
        "loss_end": p.metadata.get("loss_end"),
        "steps": steps,
        "lr": lr,
        "rank": rank,
    }


def table(r: dict[str, Any]) -> str:
    probes = r["probes"]
    head = "| fact | key span | " + " | ".join(PHASES) + " |\n|---|---|" + "---|" * len(PHASES)
    rows = [head]
    for i, fact in enumerate(r["facts"]):
        own = [j for j, p in enumerate(probes) if p["fact"] == i]
        key = probes[own[0]]["key"] if own else "-"
        cells = []
        for ph in PHASES:
            hits = sum(key.casefold() in r["answers"][ph][j].casefold() for j in own)
            cells.append(f"{'yes' if r['recalled'][ph][i] else 'no'} ({hits}/{len(own)})")
        rows.append(f"| {fact} | {key} | " + " | ".join(cells) + " |")
    totals = [f"**{sum(r['recalled'][ph])} / {len(r['facts'])}**" for ph in PHASES]
    rows.append("| facts recalled | | " + " | ".join(totals) + " |")
    return "\n".join(rows)


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Distillation: held-out recall of five facts",
        "",
        f"{r['when']}, commit {r['commit']}, {r['machine']}; SmolLM2-135M-Instruct float32 on CPU "
        f"({r['threads']} threads). `mem.distil` with steps={r['steps']}, lr={r['lr']}, "
        f"rank={r['rank']} on {r['examples']} template examples: {r['train_s']} s "
        f"(training in the model process: {r['adapter_train_s']} s), loss "
        f"{r['loss_start']:.3f} -> {r['loss_end']:.3f}.",
        "",
        "Each fact is asked in 3 held-out forms (never used in training); cells: recalled "
        "(most answers contain the key span, greedy, 24 tokens) and answers containing it.",
        "",
        table(r),
        "",
        f"Base model restored on unload: greedy replies identical: {r['restored_greedy']}; "
        f"scores of the held-out items identical: {r['restored_scores']}.",
        "",
        "## Answers",
        "",
        "| question | key | before | after | unloaded | reloaded |",
        "|---|---|---|---|---|---|",
    ]
    for j, p in enumerate(r["probes"]):
        cells = [r["answers"][ph][j].replace("|", "/").replace("\n", " ") for ph in PHASES]
        lines.append(f"| {p['question']} | {p['key']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _commit() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("DISTILL_COMMIT", "unknown")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument(
        "--model-cache",
        type=Path,
        default=Path(
            os.environ.get("MEMOS_MODEL_CACHE") or ROOT / ".pytest_cache" / "memos-models"
        ),
    )
    args = ap.parse_args()
    os.environ["MEMOS_MODEL_CACHE"] = str(args.model_cache)
    from memos_agents import MemOS
    from memos_agents.graph.falkordb_server import stop_server

    with tempfile.TemporaryDirectory(prefix="distill-") as tmp:
        mem = MemOS.open(Path(tmp) / "memos", graph_idle_timeout=60)
        try:
            mem.model(threads=args.threads)
            r = measure(mem, FACTS, steps=args.steps, lr=args.lr, rank=args.rank)
        finally:
            mem.stop_model()
            mem.close()
            stop_server(Path(tmp) / "memos" / "graph")
    r |= {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "threads": args.threads,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "distill.json").write_text(json.dumps(r, indent=2) + "\n")
    (args.results / "distill.md").write_text(markdown(r))
    summary = {ph: sum(r["recalled"][ph]) for ph in PHASES}
    summary |= {k: r[k] for k in ("restored_greedy", "restored_scores", "train_s")}
    print(json.dumps(summary) if args.json else markdown(r))


if __name__ == "__main__":
    main()
