"""Keyword text shared by every layer: the token pattern, the BM25 stop list, Snowball stems,
and the concept key that graph and router match concepts by."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

WORD_RE = re.compile(r"(?u)\b\w\w+\b")  # the token pattern of bm25s / scikit-learn
# bm25s's English stop list: short, so "where", "when", "who" still carry meaning to BM25
KEYWORD_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
)

# a question's syntax, not what it asks about: interrogatives, auxiliaries and modals
# ("may" is a month), third-person pronouns. A query's BM25 terms leave them out: "her",
# "has", "what" match every turn that happens to use them. "I", "my", "you" stay: a user's
# "my dog" is what their own turns say
QUESTION_WORDS = frozenset(
    "what which who whom whose when where why how do does did has have had having is are was "
    "were be been being am will would shall should can could might must he him his she her "
    "hers it its they them their theirs".split()
)

_local = threading.local()


def _stemmer() -> Any:
    st = getattr(_local, "stemmer", None)
    if st is None:
        import Stemmer  # PyStemmer: the Snowball stemmers

        st = _local.stemmer = Stemmer.Stemmer("english")
    return st


def stem_words(words: Sequence[str]) -> list[str]:
    return list(_stemmer().stemWords(list(words)))


def keyword_words(text: str) -> tuple[list[str], list[str]]:
    """The lower-cased, stop-listed words of `text` and their Snowball stems (`keyword_tokens`),
    aligned."""
    words = [w for w in WORD_RE.findall(text.lower()) if w not in KEYWORD_STOPWORDS]
    return words, (stem_words(words) if words else [])


def keyword_tokens(text: str) -> list[str]:
    """Lower-cased, stop-listed, Snowball-stemmed words: what BM25 indexes and matches."""
    return keyword_words(text)[1]


def query_tokens(text: str) -> list[str]:
    """A query's BM25 terms: `keyword_tokens` but the `QUESTION_WORDS` (all of them when
    nothing else is left: "Who is he?")."""
    words, stems = keyword_words(text)
    kept = [s for w, s in zip(words, stems, strict=True) if w not in QUESTION_WORDS]
    return kept or stems


def concept_key(phrase: str) -> str:
    """The normal form concepts are matched by: stemmed lower-case words."""
    words = WORD_RE.findall(phrase.lower())
    return " ".join(stem_words(words)) if words else ""
