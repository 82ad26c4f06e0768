"""The columnar scope index: a snapshot restores the same docs, neighbours and scores as the
index it was written from; a purge leaves nothing of the cube in the columns, the tables or
the snapshot files; a stable content hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memos_agents.retrieval import Doc, RetrievalConfig, ScopeIndex, snapshot
from memos_agents.retrieval.index import content_hash_of

WORDS = ["dog", "miso", "lisbon", "porto", "trip", "paint", "sunrise", "adopt", "kite", "choir"]
NAMES = ["ana", "omar", "lena"]


def _doc(i: int, rng: np.random.Generator, **kw: object) -> Doc:
    words = tuple(rng.choice(WORDS, size=int(rng.integers(0, 7))).tolist())
    speaker = NAMES[i % 3] if i % 4 else None
    base = dict(id=f"c{i:04d}", session=None if i % 9 == 0 else f"s{i % 5}",
                created_at=float(i // 2), valid_from=float(i // 2 + 1),
                valid_to=float(i + 50) if i % 7 == 0 else None,
                expires_at=float(i + 90) if i % 11 == 0 else None, speaker=speaker,
                entities=frozenset(NAMES[j] for j in range(3) if (i >> j) & 1),
                importance=0.25 + (i % 4) / 10, state="active", keyed=i % 13 == 0,
                tokens=words, content_hash=content_hash_of(speaker, " ".join(words)),
                dated=i % 3 == 0, when=((float(i), float(i + 86400)),) if i % 6 == 0 else (),
                version=1)
    base.update(kw)
    return Doc(**base)  # type: ignore[arg-type]


def _built(root: Path, n: int = 700, tail: int = 60) -> ScopeIndex:
    rng = np.random.default_rng(3)
    idx = ScopeIndex("default", "ana", RetrievalConfig())
    idx.on_built = lambda b: snapshot.save(root, b)
    idx.load([_doc(i, rng) for i in range(n)])
    idx.mark = (n, 0)
    idx.upsert([_doc(5, rng, tokens=("zebra", "crossing"), version=2)])  # retires a row
    idx.upsert([_doc(8, rng, state="archived", version=2, tokens=idx.docs[idx.pos["c0008"]]
                     .tokens)])  # in place, no longer live
    idx.keyword_scores(["dog"])  # the main segments (and a snapshot)
    idx.upsert([_doc(i, rng) for i in range(n, n + tail)])  # the tail
    idx.mark = (n + tail + 2, 0)
    snapshot.save(root, idx)
    return idx


def _restored(root: Path) -> ScopeIndex:
    b = ScopeIndex("default", "ana", RetrievalConfig())
    assert snapshot.restore(root, b)
    return b


def test_a_restored_snapshot_has_the_same_docs_neighbours_and_scores(tmp_path: Path) -> None:
    a = _built(tmp_path)
    b = _restored(tmp_path)
    assert len(b.docs) == len(a.docs) == 761 and b._main_n == 701 and b.saved_n == len(a.docs)
    assert list(b.docs) == list(a.docs)  # every field of every row
    assert b.mark == a.mark and b.entity_names == a.entity_names
    assert sorted(b.pos) == sorted(a.pos) and "c0005" in b.pos
    assert [b.pos.get(c) for c in ("c0000", "c0005", "c0759", "nope")] == [
        a.pos.get(c) for c in ("c0000", "c0005", "c0759", "nope")]
    for d in a.docs[:50]:
        assert b.by_hash.get(d.content_hash, []) == a.by_hash.get(d.content_hash, [])
    rows = list(range(len(a.docs)))
    for x, y in zip(a.adjacent(rows), b.adjacent(rows), strict=True):
        assert np.array_equal(x, y)
    assert all(a.neighbours(i, 3, 3) == b.neighbours(i, 3, 3) for i in rows)
    for q in (["dog", "miso"], ["zebra"], ["choir", "kite", "kite"], ["nothing"]):
        sa, sb = a.keyword_scores(q), b.keyword_scores(q)
        assert sa.keys() == sb.keys()
        for name in sa:
            assert np.array_equal(sa[name], sb[name]), name
    for x, y in zip(a.arrays(), b.arrays(), strict=True):
        assert np.array_equal(x, y)


def test_the_columns_match_the_docs_they_were_given(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    docs = [_doc(i, rng) for i in range(40)]
    idx = ScopeIndex("default", "ana", RetrievalConfig())
    idx.load(docs)
    want = sorted(docs, key=lambda d: (d.created_at, d.id))
    assert list(idx.docs) == want and len(idx.docs) == 40
    assert idx.docs[-1] == want[-1] and idx.docs[2:4] == want[2:4]
    live = [set(d.tokens) for d in want if d.alive]
    got = idx.live_doc_freq(["dog", "kite", "absent"])
    want_df = {w: sum(w in s for s in live) for w in ("dog", "kite")}
    assert got == {w: k for w, k in want_df.items() if k}
    # a session's neighbours: by time, then arrival
    i = idx.pos["c0012"]
    seq = sorted((j for j, d in enumerate(want) if d.session == want[i].session),
                 key=lambda j: (want[j].created_at, j))
    at = seq.index(i)
    assert idx.neighbours(i, 1, 1) == [j for j in seq[max(0, at - 1): at + 2] if j != i]


def test_a_purge_leaves_nothing_of_the_cube_in_memory_or_on_disk(tmp_path: Path) -> None:
    a = _built(tmp_path)
    gone = a.docs[a.pos["c0300"]]
    secret = ("quetzalcoatl", "zanzibar")
    a.upsert([Doc(**{**{f: getattr(gone, f) for f in Doc.__slots__},  # type: ignore[arg-type]
                     "tokens": secret, "entities": frozenset({"xochitl"}), "version": 2,
                     "content_hash": content_hash_of("ana", "quetzalcoatl zanzibar")})])
    a.keyword_scores(["zanzibar"])
    a.remove([gone.id])
    c = a.columns
    assert gone.id not in a.pos and a.holds_purged
    assert [d.tokens for d in a.docs if d.id == gone.id] == [(), ()]  # both versions emptied
    assert not {*secret} & set(c.tables["words"].items)
    assert "xochitl" not in c.tables["names"].items and "xochitl" not in a.entity_names
    assert a.by_hash.get(content_hash_of("ana", "quetzalcoatl zanzibar"), []) == []
    assert (c.flat_view("tokens") < len(c.tables["words"])).all()
    assert a.keyword_scores(["zanzibar"])["keyword"].max() == 0
    snapshot.save(tmp_path, a)  # refused: the main segments hold its postings
    a._segments = None
    a.keyword_scores(["dog"])  # rebuilt without it (and compacted): a snapshot is written
    assert gone.id not in a.ids_of(range(len(a.docs)))
    home = snapshot.scope_dir(tmp_path, "default", "ana")
    files = [p for p in home.rglob("*") if p.is_file()]
    assert files and (home / "current").exists()
    for p in files:
        data = p.read_bytes()
        assert b"zanzibar" not in data and b"xochitl" not in data
        assert gone.id.encode() not in data, p
    b = _restored(tmp_path)
    assert gone.id not in b.pos and list(b.docs) == list(a.docs)


def test_the_content_hash_is_stable() -> None:
    assert content_hash_of("Ana", " I  like\nMISO ") == content_hash_of("Ana", "i like miso")
    assert content_hash_of(None, "x") == content_hash_of("", "x") != content_hash_of("Ana", "x")
    assert content_hash_of("Ana", "i like miso") == 1732791397847317201


def _entity_match_of_docs(docs: list[Doc], names: list[str]) -> list[float]:
    return [sum(1.0 if d.speaker == n else 0.5 if n in d.entities else 0.0 for n in names)
            / len(names) for d in docs]


def test_entity_match_and_rows_of_agree_with_the_docs(tmp_path: Path) -> None:
    """The column-wise entity match and id lookup give what the docs say, row by row, also for
    rows added after the ids were sorted, retired rows and unknown ids."""
    idx = _built(tmp_path)
    rows = [0, 1, 2, 5, 8, 63, 700, 701, 760]
    docs = [idx.docs[i] for i in rows]
    for names in (["ana"], ["omar", "lena"], ["ana", "nobody"]):
        got = idx.entity_match(rows, names).tolist()
        assert got == _entity_match_of_docs(docs, names)
    assert set(idx.entity_match(range(len(idx.docs)), ["ana"]).tolist()) == {0.0, 0.5, 1.0}
    asked = ["c0005", "c0008", "c0003", "c0755", "nope", "c" + "9" * 80]
    want = [idx.pos.get(c, -1) for c in asked]
    assert want[0] is not None and want[0] >= 700  # c0005 was retired and appended again
    assert idx.pos.rows_of(asked).tolist() == want
    assert want[-2:] == [-1, -1]
    assert _restored(tmp_path).pos.rows_of(asked).tolist() == want


def test_told_of_agrees_with_each_row_s_when_spans(tmp_path: Path) -> None:
    """The column-wise time test: a row tells of [lo, hi) when one of its `when` spans
    overlaps it, as its Doc says."""
    idx = _built(tmp_path)
    rows = list(range(len(idx.docs)))
    for lo, hi in ((0.0, 1.0), (60.0, 61.0), (100.0, 90_000.0), (-np.inf, np.inf), (5e9, 6e9)):
        want = [any(s < hi and e > lo for s, e in idx.docs[i].when) for i in rows]
        assert idx.told_of(rows, lo, hi).tolist() == want
    assert any(idx.told_of(rows, 100.0, 90_000.0)) and not any(idx.told_of(rows, 5e9, 6e9))
    assert idx.told_of([], 0.0, 1.0).tolist() == []
