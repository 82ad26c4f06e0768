"""Resident memory of one writer process adding many small scopes, under a scope cache bound.

Adds `--users` users x `--turns` generated turns each (bench/scaleout.py's pooled corpus:
the model embeds the pool's 2,000 texts once, then the vectors are looked up), one `mem.add`
per user, on the embedded defaults, with `RetrievalConfig.scope_cache_docs` set to `--bound`;
prints the RSS after opening and at the end, and how many scope indexes stay loaded. Run it
with `MEMOS_VECTOR_SERVER=1` to keep Chroma out of the process.

    python bench/scope_memory.py --bound 100000
    python bench/scope_memory.py --bound 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import scaleout  # noqa: E402

from memos_agents import MemOS  # noqa: E402
from memos_agents.embeddings import resolve_embedder  # noqa: E402

POOL = 2000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bound", type=int, default=100_000, help="scope_cache_docs")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--turns", type=int, default=100, help="per user")
    args = ap.parse_args()

    items = scaleout.pool(scaleout.SEED, POOL)
    model = resolve_embedder(None)
    texts = [scaleout.pool_text(sp, t) for sp, t, _ in items]
    vecs = np.asarray(model.embed_documents(texts), dtype=np.float32)
    embedder = scaleout.PooledEmbedder(model, dict(zip(texts, vecs, strict=True)))
    mem = MemOS.open(tempfile.mkdtemp(prefix="scope-memory-"), embedder=embedder)
    router = mem.vault.router
    router.config = router.config.model_copy(update={"scope_cache_docs": args.bound})
    start = psutil.Process().memory_info().rss / 2**20
    t0 = time.perf_counter()
    users = [f"u{b:04d}" for b in range(args.users)]
    for b, user in enumerate(users):
        turns, _ = scaleout.batch_turns(scaleout.SEED, b, args.turns, args.users, POOL)
        mem.add(turns, user_id=user, session_id=f"s{b}")
    mem.vault.operator.flush()
    took = time.perf_counter() - t0
    loaded = sum(router.loaded("default", u) is not None for u in users)
    end = psutil.Process().memory_info().rss / 2**20
    print(f"scope_cache_docs {args.bound}: {args.users * args.turns} turns in {took:.0f} s, "
          f"{loaded} of {args.users} scope indexes loaded, RSS {start:.0f} -> {end:.0f} MB "
          f"(vector server: {os.environ.get('MEMOS_VECTOR_SERVER', '0')}; "
          f"{embedder.misses} texts not in the pool)")
    mem.close()


if __name__ == "__main__":
    main()
