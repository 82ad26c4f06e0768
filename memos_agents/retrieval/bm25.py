"""Lucene BM25: a main segment (bm25s) and a tail of docs added since it was built, scored with
the same formula and the main segment's statistics plus the tail's."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class BM25Segment:
    """bm25s over a fixed list of token lists (lucene BM25), its per-term scores in float16
    (older snapshots' float32 read the same way)."""

    def __init__(self, docs: list[Sequence[str]], k1: float, b: float) -> None:
        import bm25s

        self.n = len(docs)
        self.k1, self.b = k1, b
        self.df: Counter[str] = Counter()
        total = 0
        for toks in docs:
            self.df.update(set(toks))
            total += len(toks)
        self.avgdl = total / self.n if self.n else 1.0
        self.model = None
        self.path: Path | None = None  # the folder it was last saved to or opened from
        if self.n:
            vocab: dict[str, int] = {"": 0}
            ids = [[vocab.setdefault(t, len(vocab)) for t in toks] or [0] for toks in docs]
            self.model = bm25s.BM25(k1=k1, b=b, method="lucene")
            self.model.index((ids, vocab), show_progress=False)
            # half precision per (term, doc) score: half the pages a search touches; the sums
            # are taken in float32 (`scores`)
            self.model.scores["data"] = self.model.scores["data"].astype(np.float16)
            self.vocab = vocab

    def save(self, path: Path) -> dict[str, Any]:
        """Write the segment's arrays under `path` (bm25s files; hard links to the files it
        was saved to before, where it can); its statistics, to keep with them for `opened`."""
        if self.model is not None and not self._linked(path):
            self.model.save(str(path), show_progress=False)
        return {"n": self.n, "avgdl": self.avgdl, "df": dict(self.df)}

    def _linked(self, path: Path) -> bool:
        """Whether every file of the folder it was saved to could be linked into `path`."""
        if self.path is None:
            return False
        try:
            path.mkdir(parents=True)
            for f in self.path.iterdir():
                os.link(f, path / f.name)
        except OSError:
            for f in path.glob("*"):
                f.unlink(missing_ok=True)
            return False
        return True

    @classmethod
    def opened(cls, path: Path, stats: dict[str, Any], k1: float, b: float) -> BM25Segment:
        """The segment `save` wrote under `path`, its arrays memory-mapped (shared with every
        process that opens them)."""
        import bm25s

        seg = cls([], k1, b)
        seg.n, seg.avgdl, seg.df = int(stats["n"]), float(stats["avgdl"]), Counter(stats["df"])
        if seg.n:
            seg.model = bm25s.BM25.load(str(path), mmap=True, show_progress=False)
            seg.vocab = seg.model.vocab_dict
        seg.path = path
        return seg

    def scores(self, query: Sequence[str]) -> np.ndarray:
        if self.model is None:
            return np.zeros(0, dtype=np.float32)
        ids = [self.vocab[t] for t in dict.fromkeys(query) if t in self.vocab]
        out = np.zeros(self.n, dtype=np.float32)
        index = self.model.scores
        data, docs, starts = index["data"], index["indices"], index["indptr"]
        for t in ids:  # a term's docs are distinct: one fancy-indexed add per term
            a, z = starts[t], starts[t + 1]
            out[docs[a:z]] += data[a:z]
        return out

    def idf(self, token: str, n_total: int, df_extra: int) -> float:
        df = self.df.get(token, 0) + df_extra
        return math.log(1 + (n_total - df + 0.5) / (df + 0.5))


class BM25Tail:
    """Docs added since `seg` was built, as an inverted index: Lucene BM25 with `seg`'s
    statistics plus theirs, scored per query term with numpy."""

    def __init__(self, seg: BM25Segment, docs: list[list[str]]) -> None:
        self.seg = seg
        self.n = len(docs)
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for j, toks in enumerate(docs):
            for t, c in Counter(toks).items():
                ids, tfs = postings.setdefault(t, ([], []))
                ids.append(j)
                tfs.append(c)
        self.postings = {
            t: (np.array(ids, dtype=np.int64), np.array(tfs, dtype=np.float64))
            for t, (ids, tfs) in postings.items()
        }
        lengths = np.array([len(t) for t in docs], dtype=np.float64)
        avgdl = (seg.avgdl * seg.n + lengths.sum()) / max(1, seg.n + self.n)
        self.norm = seg.k1 * (1 - seg.b + seg.b * lengths / avgdl)

    def scores(self, query: Sequence[str], n_total: int) -> np.ndarray:
        out = np.zeros(self.n, dtype=np.float64)
        for t in dict.fromkeys(query):
            if (p := self.postings.get(t)) is None:
                continue
            ids, tf = p
            out[ids] += self.seg.idf(t, n_total, len(ids)) * tf / (tf + self.norm[ids])
        return out.astype(np.float32)
