"""Durable snapshots of a scope index, shared by the processes of one data dir.

When a `ScopeIndex` rebuilds its main BM25 segments, and when `EVERY` docs have joined its tail
since, it writes them (bm25s arrays; unchanged ones hard-linked) with its docs and its change
mark under `<root>/<scope>/<seq>-<purged>-<id>/`, and points `<root>/<scope>/
current` at that folder (an atomic rename). A process opening the scope maps the arrays
(`mmap`: one copy in the page cache for every worker) and reads the docs' columns (numpy
arrays and a few string tables: no object per doc) instead of parsing every cube and
rebuilding; the router then applies what was written since the snapshot's mark
(`Router.scope_index`). A snapshot that is missing, partial or built with other BM25 settings
is not used: the scope is loaded from the catalog as before."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from .bm25 import BM25Segment
from .config import RetrievalConfig
from .index import FLAT_COLUMNS, ROW_COLUMNS, TABLES, Columns, ScopeIndex
from .lexicon import Lexicon

log = logging.getLogger(__name__)

FORMAT = 4  # 4: with the lexicon; 3: the docs as columns (`.npy` under `columns/`, `tables.json`)
EVERY = 2000  # docs added since the last snapshot that make the router write a new one


def scope_dir(root: Path, vault: str, user_id: str) -> Path:
    """The folder of one scope's snapshots (named by a digest: any vault or user name)."""
    digest = hashlib.sha256(f"{vault}\0{user_id}".encode()).hexdigest()[:32]
    return root / digest


def _params(config: RetrievalConfig) -> list[float]:
    return [config.bm25_k1, config.bm25_b, config.context_turns, config.window_turns]


def _write_columns(folder: Path, c: Columns) -> None:
    """The docs as arrays (`columns/<name>.npy`) and their string tables (`tables.json`)."""
    cols = folder / "columns"
    cols.mkdir()
    for name in ROW_COLUMNS:
        np.save(cols / f"{name}.npy", c.view(name), allow_pickle=False)
    for name in FLAT_COLUMNS:
        np.save(cols / f"{name}.npy", c.flat_view(name), allow_pickle=False)
    np.save(cols / "ids.npy", c.ids[: c.n], allow_pickle=False)
    tables = {k: c.tables[k].items for k in TABLES}
    (folder / "tables.json").write_text(json.dumps(tables), "utf-8")


def _read_columns(folder: Path) -> Columns:
    """`_write_columns`' arrays, checked (ValueError, OSError: not usable)."""
    cols = folder / "columns"

    def arr(name: str) -> np.ndarray:
        return np.load(cols / f"{name}.npy", allow_pickle=False)

    got = json.loads((folder / "tables.json").read_text("utf-8"))
    tables = {k: got[k] for k in TABLES}
    if not all(isinstance(v, list) and all(isinstance(s, str) for s in v)
               for v in tables.values()):
        raise ValueError("tables: not lists of strings")
    return Columns.of({k: arr(k) for k in ROW_COLUMNS}, {k: arr(k) for k in FLAT_COLUMNS},
                      arr("ids"), tables)


def save(root: Path, idx: ScopeIndex) -> None:
    """Write `idx` (lock held) as its scope's current snapshot; not while its segments hold
    postings of a purged cube (nothing of an erased cube is written to disk)."""
    segments, mark = idx.segments, idx.mark
    if segments is None or mark is None or idx.holds_purged:
        return
    home = scope_dir(root, idx.vault, idx.user_id)
    name = f"{mark[0]}-{mark[1]}-{uuid.uuid4().hex[:12]}"
    tmp = home / f"tmp-{name}"
    try:
        tmp.mkdir(parents=True)
        stats = {key: seg.save(tmp / key) for key, seg in segments.items()}
        _write_columns(tmp, idx.columns)
        idx.lexicon.save(tmp)
        meta = {"format": FORMAT, "vault": idx.vault, "user_id": idx.user_id, "mark": mark,
                "params": _params(idx.config), "segments": stats}
        (tmp / "meta.json").write_text(json.dumps(meta), "utf-8")
        os.replace(tmp, home / name)
        (home / f"current-{name}").write_text(name, "utf-8")
        os.replace(home / f"current-{name}", home / "current")
    except OSError as exc:
        log.warning("could not write the keyword index snapshot of %s/%s: %s",
                    idx.vault, idx.user_id, exc)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    for key, seg in segments.items():
        seg.path = home / name / key
    idx.saved_n = len(idx.docs)
    _prune(home, keep={name})


def _prune(home: Path, keep: set[str]) -> None:
    """Remove the scope's other snapshots but the current one (a reader that still maps one
    keeps its pages; a reader that had not opened it yet falls back to the catalog)."""
    with contextlib.suppress(OSError):
        keep.add((home / "current").read_text("utf-8"))
        for p in home.iterdir():
            if p.is_dir() and p.name not in keep and not p.name.startswith("tmp-"):
                shutil.rmtree(p, ignore_errors=True)


def restore(root: Path, idx: ScopeIndex) -> bool:
    """Fill `idx` from its scope's current snapshot; False (idx untouched) if there is none
    usable."""
    home = scope_dir(root, idx.vault, idx.user_id)
    try:
        folder = home / (home / "current").read_text("utf-8")
        meta = json.loads((folder / "meta.json").read_text("utf-8"))
        if (meta.get("format") != FORMAT or meta["params"] != _params(idx.config)
                or [meta["vault"], meta["user_id"]] != [idx.vault, idx.user_id]):
            return False
        cfg = idx.config
        segments = {key: BM25Segment.opened(folder / key, stats, cfg.bm25_k1, cfg.bm25_b)
                    for key, stats in meta["segments"].items()}
        docs = _read_columns(folder)
        lexicon = Lexicon.load(folder)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("keyword index snapshot of %s/%s not used: %s",
                        idx.vault, idx.user_id, exc)
        return False
    if len({seg.n for seg in segments.values()}) != 1 or any(
            seg.n > docs.n for seg in segments.values()):
        return False
    idx.restore(docs, segments, (int(meta["mark"][0]), int(meta["mark"][1])), lexicon)
    return True


def drop(root: Path, vault: str, user_id: str) -> None:
    """Remove every snapshot of a scope (a purge: nothing of an erased cube stays on disk)."""
    shutil.rmtree(scope_dir(root, vault, user_id), ignore_errors=True)
