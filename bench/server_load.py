"""Load on the server: N concurrent clients on 127.0.0.1 doing a mixed add/search load for a
bounded time, against `memos-agents serve` in its own process(es), beside the same operations
called in-process on the facade, so the HTTP overhead is a ratio.

Each client is a thread with its own keep-alive `httpx.Client` and its own user key (`user:c<i>`);
an operation is an add (`POST /v1/memories`, one turn) with probability `--write`, else a hybrid
search (`POST /v1/search`, k=5) over what that user wrote. Latencies are per request, client side.

    python bench/server_load.py                          # 8 clients, 30 s, 1 worker
    python bench/server_load.py --clients 16 --workers 2 --seconds 60

Results go to bench/results/server_load.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
CLI = str(Path(sys.executable).with_name("memos-agents"))

PLACES = ["the harbour", "the orchard", "the library", "the old mill", "the ridge", "the market"]
THINGS = ["a red kayak", "tulip bulbs", "a brass telescope", "sourdough", "a chess set", "bees"]


def turn(rng: random.Random, i: int) -> str:
    return (f"On day {i} I took {rng.choice(THINGS)} to {rng.choice(PLACES)} "
            f"and met {rng.choice(['Ana', 'Bo', 'Cyd', 'Dee'])} there.")


def query(rng: random.Random) -> str:
    return f"When did I take {rng.choice(THINGS)} to {rng.choice(PLACES)}?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(d: Path, clients: int, seed_turns: int) -> list[str]:
    """Keys for `clients` users, each with `seed_turns` memories already stored."""
    from memos_agents import MemOS
    from memos_agents.keys import KeyStore

    secrets = []
    with MemOS.open(d, graph_idle_timeout=600) as mem:
        keys = KeyStore(mem.vault.catalog.engine)
        for c in range(clients):
            rng = random.Random(c)
            secrets.append(keys.create(f"user:c{c}")[1])
            mem.add([{"role": "user", "content": turn(rng, i)} for i in range(seed_turns)],
                    user_id=f"c{c}")
    return secrets


def serve(d: Path, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [CLI, "serve", "--dir", str(d), "--port", str(port), "--workers", str(workers),
         "--no-scheduler"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/openapi.json", timeout=5)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not start")


def client(url: str, secret: str, seed: int, write: float, until: float,
           out: list[tuple[str, float, int]]) -> None:
    rng = random.Random(1000 + seed)
    i = 10_000
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"},
                      timeout=60) as c:
        while time.monotonic() < until:
            kind = "add" if rng.random() < write else "search"
            t0 = time.perf_counter()
            try:
                if kind == "add":
                    r = c.post("/v1/memories", json={"messages": turn(rng, i)})
                    i += 1
                else:
                    r = c.post("/v1/search", json={"query": query(rng), "k": 5})
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            out.append((kind, time.perf_counter() - t0, status))


def serial_http(url: str, secret: str, n: int, write: float) -> dict[str, list[float]]:
    """The in-process run's operations, one at a time over HTTP (user c0): the overhead alone."""
    rng = random.Random(7)
    lat: dict[str, list[float]] = {"add": [], "search": []}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"},
                      timeout=60) as c:
        for i in range(n):
            kind = "add" if rng.random() < write else "search"
            t0 = time.perf_counter()
            if kind == "add":
                c.post("/v1/memories", json={"messages": turn(rng, 60_000 + i)})
            else:
                c.post("/v1/search", json={"query": query(rng), "k": 5})
            lat[kind].append(time.perf_counter() - t0)
    return lat


def in_process(d: Path, n: int, write: float) -> dict[str, list[float]]:
    """The same operations on the facade in this process, one at a time (user c0)."""
    from memos_agents import MemOS

    rng = random.Random(7)
    lat: dict[str, list[float]] = {"add": [], "search": []}
    with MemOS.open(d, graph_idle_timeout=600).as_principal("user:c0") as mem:
        mem.search("warm up", user_id="c0")
        for i in range(n):
            kind = "add" if rng.random() < write else "search"
            t0 = time.perf_counter()
            if kind == "add":
                mem.add(turn(rng, 50_000 + i), user_id="c0")
            else:
                mem.search(query(rng), user_id="c0", k=5)
            lat[kind].append(time.perf_counter() - t0)
    return lat


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1000, q)) if xs else float("nan")


def summarise(samples: list[tuple[str, float, int]], seconds: float,
              local: dict[str, list[float]], serial: dict[str, list[float]]) -> dict[str, Any]:
    rows = {}
    for kind in ("add", "search"):
        ok = [t for k, t, s in samples if k == kind and 200 <= s < 300]
        rows[kind] = {
            "requests": sum(1 for k, _, _ in samples if k == kind),
            "errors": sum(1 for k, _, s in samples if k == kind and not 200 <= s < 300),
            "throughput_rps": len(ok) / seconds,
            "p50_ms": pct(ok, 50), "p95_ms": pct(ok, 95), "p99_ms": pct(ok, 99),
            "in_process_p50_ms": pct(local[kind], 50),
            "in_process_p95_ms": pct(local[kind], 95),
            "serial_http_p50_ms": pct(serial[kind], 50),
            "serial_http_p95_ms": pct(serial[kind], 95),
        }
    return rows


def table(res: dict[str, Any]) -> str:
    a = res["args"]
    lines = [
        f"# Server load: {a['clients']} clients, {a['workers']} worker(s), {a['seconds']} s, "
        f"{int(a['write'] * 100)}% adds",
        "",
        f"{res['machine']}; `python bench/server_load.py --clients {a['clients']} "
        f"--workers {a['workers']} --seconds {a['seconds']}`; {res['date']}",
        "",
        "| op | requests | errors | ok/s | p50 ms | p95 ms | p99 ms | one client over HTTP "
        "p50 / p95 ms | in-process p50 / p95 ms | HTTP overhead (one client p50 / in-process) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in res["ops"].items():
        ratio = r["serial_http_p50_ms"] / r["in_process_p50_ms"]
        lines.append(
            f"| {kind} | {r['requests']} | {r['errors']} | {r['throughput_rps']:.1f} "
            f"| {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['serial_http_p50_ms']:.1f} / {r['serial_http_p95_ms']:.1f} "
            f"| {r['in_process_p50_ms']:.1f} / {r['in_process_p95_ms']:.1f} | {ratio:.2f}x |")
    lines += ["", f"total: {res['total_rps']:.1f} requests/s, {res['errors']} errors", ""]
    return "\n".join(lines)


def plot(samples: list[tuple[str, float, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for kind in ("add", "search"):
        xs = sorted(t * 1000 for k, t, s in samples if k == kind and 200 <= s < 300)
        if xs:
            ax.plot(xs, np.linspace(0, 1, len(xs)), label=kind)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, client side)")
    ax.set_ylabel("fraction of requests")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--write", type=float, default=0.2, help="share of adds")
    p.add_argument("--seed-turns", type=int, default=50, help="memories per user before")
    p.add_argument("--local-ops", type=int, default=100, help="in-process operations")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "memos"
        secrets = prepare(d, args.clients, args.seed_turns)
        proc, url = serve(d, args.workers)
        samples: list[tuple[str, float, int]] = []
        try:
            until = time.monotonic() + args.seconds
            threads = [threading.Thread(target=client, args=(url, s, i, args.write, until,
                                                              samples))
                       for i, s in enumerate(secrets)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            serial = serial_http(url, secrets[0], args.local_ops, args.write)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=60)
        local = in_process(d, args.local_ops, args.write)
        from memos_agents.graph.falkordb_server import stop_server

        stop_server(d / "graph")
    ops = summarise(samples, args.seconds, local, serial)
    res = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "args": vars(args),
        "ops": ops,
        "total_rps": sum(r["throughput_rps"] for r in ops.values()),
        "errors": sum(r["errors"] for r in ops.values()),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "server_load.json").write_text(json.dumps(res, indent=2))
    (OUT / "server_load.md").write_text(table(res))
    plot(samples, OUT / "server_load.png")
    print(table(res))


if __name__ == "__main__":
    main()
