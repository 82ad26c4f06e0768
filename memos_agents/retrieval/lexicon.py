"""The words of one scope and their embeddings, for keyword query expansion.

BM25 matches a question's words only: "What activities does Melanie do?" misses the turn that
says "hobbies", "kids" the one that says "children". The lexicon holds every word the scope's
facts use, as written, with its stem (`ScopeIndex` feeds it), and embeds each once, on first
need, with the vault's embedder; `expand` gives each query word the scope's words nearest to
it in that space, which the keyword route adds to its BM25 terms. Only the scope's own words
are candidates, so an expansion always matches something the user said; a purge drops the
words no live fact uses any more (`keep`)."""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Container, Sequence
from pathlib import Path

import numpy as np

from ..embeddings import Embedder
from ..reader import stop_words
from ..text import WORD_RE, stem_words

FILE = "lexicon"  # <snapshot>/lexicon.json (words) and lexicon.npy (their vectors, float16)


def eligible(word: str) -> bool:
    """A word worth embedding and expanding: letters only, 3 or more, not a stop word."""
    return len(word) >= 3 and word.isalpha() and word not in stop_words()


def expandable_words(text: str) -> list[str]:
    """The words of a query that are expanded (lower-cased, `eligible`, each once)."""
    return list(dict.fromkeys(w for w in WORD_RE.findall(text.lower()) if eligible(w)))


class Lexicon:
    """Words as written (`surfaces`), their stems and, for the first `len(vectors)` of them,
    their unit embeddings (every form: "children" and "child" sit apart in the embedding).
    Safe across threads: embedding runs outside the lock and is dropped when a `keep` changed
    the rows meanwhile."""

    def __init__(self, stems: Sequence[str] = (), surfaces: Sequence[str] = (),
                 vectors: np.ndarray | None = None) -> None:
        self.stems: list[str] = list(stems)
        self.surfaces: list[str] = list(surfaces)
        self.code: dict[str, int] = {w: i for i, w in enumerate(self.surfaces)}
        self.vectors = (np.zeros((0, 0), dtype=np.float32) if vectors is None
                        else np.asarray(vectors, dtype=np.float32))
        self._lock = threading.Lock()
        self._generation = 0  # bumped by each `keep` that drops rows

    def __len__(self) -> int:
        return len(self.stems)

    def add(self, stems: Sequence[str], surfaces: Sequence[str]) -> None:
        """Take the words not held yet (`surfaces`), each with its stem."""
        with self._lock:
            for stem, word in zip(stems, surfaces, strict=True):
                if word not in self.code and eligible(word):
                    self.code[word] = len(self.stems)
                    self.stems.append(stem)
                    self.surfaces.append(word)

    def keep(self, stems: Container[str]) -> None:
        """Only the words whose stem is in `stems` (the index's words after a purge or a
        compaction)."""
        with self._lock:
            rows = [i for i, s in enumerate(self.stems) if s in stems]
            if len(rows) == len(self.stems):
                return
            n = len(self.vectors)
            self.vectors = self.vectors[[i for i in rows if i < n]]
            self.stems = [self.stems[i] for i in rows]
            self.surfaces = [self.surfaces[i] for i in rows]
            self.code = {w: i for i, w in enumerate(self.surfaces)}
            self._generation += 1

    def embed_missing(self, embedder: Embedder) -> None:
        """Embed the words added since the last call."""
        with self._lock:
            n, generation = len(self.vectors), self._generation
            todo = self.surfaces[n:]
        if not todo:
            return
        new = _unit(embedder.embed_documents(todo))
        with self._lock:
            if generation == self._generation and len(self.vectors) == n:
                self.vectors = new if not n else np.vstack([self.vectors, new])

    def expand(self, words: Sequence[str], embedder: Embedder, per_word: int,
               min_similarity: float) -> dict[str, list[str]]:
        """Each of `words` -> the stems among its `per_word + 1` nearest scope words with a
        cosine of at least `min_similarity`, other than its own (at most `per_word`; words with
        none are left out). Its own forms ("kids", "kid") count among the nearest and add
        nothing: a word whose neighbours are its own forms is matched as it is."""
        if not words or per_word < 1 or not self.stems:
            return {}
        self.embed_missing(embedder)
        with self._lock:
            vectors, stems = self.vectors, self.stems[: len(self.vectors)]
            known = {w: i for i, w in enumerate(self.surfaces[: len(vectors)])}
        if not len(vectors):
            return {}
        fresh = _word_vectors(embedder, [w for w in words if w not in known])
        sims = np.stack([vectors[known[w]] if w in known else fresh[w] for w in words]) @ vectors.T
        own = stem_words(list(words))
        out: dict[str, list[str]] = {}
        for j, word in enumerate(words):
            got: list[str] = []
            for i in _best(sims[j], per_word + 1):
                if sims[j, i] >= min_similarity and stems[i] not in (own[j], *got):
                    got.append(stems[i])
            got = got[:per_word]
            if got:
                out[word] = got
        return out

    def save(self, folder: Path) -> None:
        """`lexicon.json` (stems, surfaces) and `lexicon.npy` (the vectors held, float16)."""
        (folder / f"{FILE}.json").write_text(
            json.dumps({"stems": self.stems, "surfaces": self.surfaces}), "utf-8")
        np.save(folder / f"{FILE}.npy", self.vectors.astype(np.float16), allow_pickle=False)

    @classmethod
    def load(cls, folder: Path) -> Lexicon:
        """`save`'s files, checked (ValueError, OSError: not usable)."""
        got = json.loads((folder / f"{FILE}.json").read_text("utf-8"))
        stems, surfaces = got["stems"], got["surfaces"]
        vectors = np.load(folder / f"{FILE}.npy", allow_pickle=False)
        if (not isinstance(stems, list) or not isinstance(surfaces, list)
                or len(stems) != len(surfaces) or len(vectors) > len(stems)
                or (len(vectors) and vectors.ndim != 2)):
            raise ValueError("lexicon: stems, surfaces and vectors do not agree")
        return cls(stems, surfaces, vectors if len(vectors) else None)


CACHED_WORDS = 4096  # query words not in their scope, embedded, kept per embedder (~6 MB)
_cache: weakref.WeakKeyDictionary[Embedder, OrderedDict[str, np.ndarray]] = (
    weakref.WeakKeyDictionary())
_cache_lock = threading.Lock()


def _word_vectors(embedder: Embedder, words: Sequence[str]) -> dict[str, np.ndarray]:
    """Unit embeddings of `words`, from a process-wide LRU per embedder (an ONNX call costs
    ~3 ms even for one word; a user's questions reuse their words)."""
    if not words:
        return {}
    with _cache_lock:
        try:
            held = _cache.setdefault(embedder, OrderedDict())
        except TypeError:  # an embedder that cannot be weakly referenced: no cache
            held = OrderedDict()
        got = {w: held[w] for w in words if w in held}
        for w in got:
            held.move_to_end(w)
    todo = [w for w in words if w not in got]
    if todo:
        new = dict(zip(todo, _unit(embedder.embed_documents(todo)), strict=True))
        got.update(new)
        with _cache_lock:
            held.update(new)
            while len(held) > CACHED_WORDS:
                held.popitem(last=False)
    return got


def _best(row: np.ndarray, n: int) -> list[int]:
    """The indexes of the `n` largest of `row`, largest first."""
    if len(row) > n:
        top = np.argpartition(-row, n - 1)[:n]
        return top[np.argsort(-row[top], kind="stable")].tolist()
    return np.argsort(-row, kind="stable").tolist()


def _unit(vectors: Sequence[Sequence[float]]) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    return v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
