"""Keyword query expansion by the scope's own words (`retrieval.lexicon`), with the real
embedder: a query word finds the turn that says it in other words, only when expansion is on;
a purge takes a purged fact's words out of the lexicon; a snapshot carries the embedded words
to the next open."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memos_agents import MemOS
from memos_agents.retrieval import RetrievalConfig
from memos_agents.retrieval.lexicon import Lexicon, expandable_words

FACTS = [
    "Melanie took the children to the beach last summer.",
    "Caroline painted a sunset over the lake.",
    "Omar repaired the harbour crane on Tuesday.",
]


def _keyword(mem: MemOS, q: str) -> list[str]:
    return [h.cube.content for h in mem.search(q, user_id="ana", k=5,
                                                          routes=["keyword"])]


@pytest.fixture
def kids(mem: MemOS) -> MemOS:
    for f in FACTS:
        mem.add(f, user_id="ana")
    return mem


def test_a_query_word_finds_the_turn_that_says_it_in_other_words(kids: MemOS) -> None:
    assert _keyword(kids, "Where did the kids go?")[0] == FACTS[0]  # + its neighbours
    stage = next(s for s in kids.explain("Where did the kids go?", user_id="ana",
                                         routes=["keyword"]).explain.stages
                 if s.name == "keyword")
    assert stage.detail["expanded"]["kids"] == ["children"]
    kids.vault.router.config = RetrievalConfig(keyword_expansion=0)
    assert _keyword(kids, "Where did the kids go?") == []  # BM25 alone: no word in common


def test_expansion_keeps_to_close_words(kids: MemOS) -> None:
    """Nothing of the scope is as close as the bound to 'crocodile': no expansion, no hit."""
    assert _keyword(kids, "crocodile") == []
    kids.vault.router.config = RetrievalConfig(keyword_expansion_min=0.99)
    assert _keyword(kids, "Where did the kids go?") == []


def test_a_purge_takes_the_facts_words_out_of_the_lexicon(kids: MemOS) -> None:
    gone = next(c for c in kids.list(user_id="ana") if "children" in c.content)
    _keyword(kids, "kids")
    idx = kids.vault.router.loaded("default", "ana")
    assert idx is not None and "children" in idx.lexicon.surfaces
    kids.purge(gone.id, user_id="ana")
    assert _keyword(kids, "Where did the kids go?") == []
    assert "children" not in idx.lexicon.surfaces and "beach" not in idx.lexicon.surfaces
    assert "sunset" in idx.lexicon.surfaces
    assert len(idx.lexicon.vectors) == len(idx.lexicon) or len(idx.lexicon.vectors) == 0


def test_a_snapshot_keeps_the_embedded_words(data_dir: Path, embedder, monkeypatch) -> None:
    a = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30)
    try:
        for f in FACTS:
            a.add(f, user_id="ana")
        assert _keyword(a, "kids")[0] == FACTS[0]  # embeds the lexicon; writes the snapshot
        held = a.vault.router.loaded("default", "ana").lexicon
        assert len(held.vectors) == len(held) > 0
    finally:
        a.close()
    b = MemOS.open(data_dir, embedder=embedder, graph_idle_timeout=30)
    try:
        embedded: list[list[str]] = []
        real = b.vault.embedder.embed_documents
        monkeypatch.setattr(b.vault.embedder, "embed_documents",
                            lambda texts: embedded.append(list(texts)) or real(texts))
        assert _keyword(b, "kids")[0] == FACTS[0]
        got = b.vault.router.loaded("default", "ana").lexicon
        assert got.surfaces == held.surfaces
        assert np.allclose(got.vectors, held.vectors, atol=1e-3)  # stored as float16
        # the scope's words came with the snapshot; "kids" is cached from the first process
        assert embedded == []
    finally:
        b.close()


def test_lexicon_units(embedder, tmp_path: Path) -> None:
    assert expandable_words("Did the kids go to a museum, or an art-show?") == [  # show: stop
        "kids", "museum", "art"]
    lex = Lexicon()
    lex.add(["children", "museum", "the"], ["children", "museum", "the"])
    assert lex.surfaces == ["children", "museum"]  # stop words are not held
    assert lex.expand(["kids", "children"], embedder, 1, 0.6) == {"kids": ["children"]}
    lex.keep({"museum"})
    assert lex.surfaces == ["museum"] and lex.vectors.shape[0] == 1
    lex.save(tmp_path)
    assert Lexicon.load(tmp_path).surfaces == ["museum"]
    (tmp_path / "lexicon.json").write_text('{"stems": [], "surfaces": []}')
    with pytest.raises(ValueError, match="do not agree"):
        Lexicon.load(tmp_path)


def test_query_words_outside_the_scope_are_embedded_once(embedder, monkeypatch) -> None:
    from memos_agents.retrieval import lexicon

    calls: list[list[str]] = []
    real = embedder.embed_documents
    monkeypatch.setattr(embedder, "embed_documents",
                        lambda texts: calls.append(list(texts)) or real(texts))
    monkeypatch.setattr(lexicon, "CACHED_WORDS", 2)
    lex = Lexicon()
    lex.add(["children"], ["children"])
    lex.expand(["toddlers", "kiddos"], embedder, 1, 0.6)
    lex.expand(["kiddos", "toddlers"], embedder, 1, 0.6)
    assert calls == [["children"], ["toddlers", "kiddos"]]
    lex.expand(["youngsters"], embedder, 1, 0.6)  # the least recently used goes
    lex.expand(["toddlers", "kiddos"], embedder, 1, 0.6)
    assert calls[2:] == [["youngsters"], ["kiddos"]]
