"""Durable snapshots of a scope index, shared by the processes of one data dir.

When a `ScopeIndex` rebuilds its main BM25 segments, and when `EVERY` docs have joined its tail
since, it writes them (bm25s arrays; unchanged ones hard-linked) with its docs and its change
mark under `<root>/<scope>/<seq>-<purged>-<id>/`, and points `<root>/<scope>/
current` at that folder (an atomic rename). A process opening the scope maps the arrays
(`mmap`: one copy in the page cache for every worker) and reads the docs instead of parsing
every cube and rebuilding; the router then applies what was written since the snapshot's mark
(`Router.scope_index`). A snapshot that is missing, partial or built with other BM25 settings
is not used: the scope is loaded from the catalog as before."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from .bm25 import BM25Segment
from .config import RetrievalConfig
from .index import Doc, ScopeIndex, content_hash

log = logging.getLogger(__name__)

FORMAT = 1
EVERY = 2000  # docs added since the last snapshot that make the router write a new one


def scope_dir(root: Path, vault: str, user_id: str) -> Path:
    """The folder of one scope's snapshots (named by a digest: any vault or user name)."""
    digest = hashlib.sha256(f"{vault}\0{user_id}".encode()).hexdigest()[:32]
    return root / digest


def _params(config: RetrievalConfig) -> list[float]:
    return [config.bm25_k1, config.bm25_b, config.context_turns, config.window_turns]


def _row(d: Doc) -> list[Any]:
    return [d.id, d.session, d.created_at, d.valid_from, d.valid_to, d.expires_at, d.speaker,
            sorted(d.entities), d.importance, d.state, d.keyed, list(d.tokens), d.alive, d.dated,
            [list(w) for w in d.when], d.version, d.text_key]


def _doc(r: list[Any]) -> Doc:
    """A doc of a snapshot row; its words, names and session interned (one object each)."""
    intern = sys.intern
    return Doc(id=r[0], session=r[1] and intern(r[1]), created_at=r[2], valid_from=r[3],
               valid_to=r[4], expires_at=r[5], speaker=r[6] and intern(r[6]),
               entities=frozenset(map(intern, r[7])), importance=r[8], state=intern(r[9]),
               keyed=r[10], tokens=tuple(map(intern, r[11])), content_hash=content_hash(r[16]),
               alive=r[12], dated=r[13], when=tuple((a, b) for a, b in r[14]), version=r[15],
               text_key=r[16])


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
        (tmp / "docs.json").write_text(json.dumps([_row(d) for d in idx.docs]), "utf-8")
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
        docs = [_doc(r) for r in json.loads((folder / "docs.json").read_text("utf-8"))]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("keyword index snapshot of %s/%s not used: %s",
                        idx.vault, idx.user_id, exc)
        return False
    if len({seg.n for seg in segments.values()}) != 1 or any(
            seg.n > len(docs) for seg in segments.values()):
        return False
    idx.restore(docs, segments, (int(meta["mark"][0]), int(meta["mark"][1])))
    return True


def drop(root: Path, vault: str, user_id: str) -> None:
    """Remove every snapshot of a scope (a purge: nothing of an erased cube stays on disk)."""
    shutil.rmtree(scope_dir(root, vault, user_id), ignore_errors=True)
