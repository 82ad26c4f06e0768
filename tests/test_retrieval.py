"""Task-aligned routing on small handmade conversations: entity hops, time filters, superseded
facts, scope isolation, explain, neighbouring context. Not the benchmark score."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from memos_agents import MemOS
from memos_agents.cube import Scope, SearchHit, State
from memos_agents.errors import InvalidInput
from memos_agents.reader import parse_time_range, read_intent
from memos_agents.retrieval import RoutedHit, SearchResult

LOCOMO = Path(__file__).resolve().parents[1] / "bench" / "data" / "locomo" / "locomo_dev.json"
T0 = datetime(2023, 5, 8, 13, 0, tzinfo=UTC)


def turn(speaker: str, text: str, when: datetime, i: int = 0) -> dict:
    return {"role": "user", "speaker": speaker, "content": text, "id": f"d{i}",
            "timestamp": when.isoformat()}


def contents(hits) -> list[str]:
    return [h.cube.content for h in hits]


def test_default_returns_hits_and_explain_shows_every_stage(mem: MemOS) -> None:
    mem.add([turn("Alice", "My dog Miso loves the beach at Cascais.", T0, 1),
             turn("Bob", "I am learning to play the violin.", T0, 2)],
            user_id="alice", session_id="s1")
    hits = mem.search("Where does Miso like to go?", user_id="alice", k=2)
    assert isinstance(hits, list) and all(isinstance(h, SearchHit) for h in hits)
    assert hits[0].cube.content.startswith("My dog Miso")
    assert 0 < hits[1].score <= hits[0].score <= 1

    res = mem.explain("Where does Miso like to go?", user_id="alice", k=2)
    assert isinstance(res, SearchResult) and len(res) == 2
    assert [h.cube.id for h in res] == [h.cube.id for h in hits]
    ex = res.explain
    assert [s.name for s in ex.stages] == ["dense", "keyword", "graph", "filter", "fuse",
                                           "materialise"]
    assert ex.intent.entities == ["Miso"] and ex.intent.answer_kind == "place"
    graph = next(s for s in ex.stages if s.name == "graph")
    assert "miso" in graph.detail["entities"]
    assert hits[0].cube.id in [c.id for c in graph.candidates]
    top = ex.fused[0]
    assert top.id == hits[0].cube.id and {"dense", "keyword", "graph"} <= set(top.parts)
    assert json.loads(res.model_dump_json())["explain"]["config"]["fusion"] == "weighted"
    assert isinstance(res.hits[0], RoutedHit) and "graph" in res.hits[0].routes


def test_entity_hop_finds_what_dense_similarity_misses(mem: MemOS) -> None:
    """The query names Priya; the fact about her work shares no other word with the question,
    but it mentions her: the graph route brings it in by the entity, whatever the embedding
    says. (The packaged MiniLM weighs the name, so dense alone ranks it first here too: what
    is pinned is the hop itself, which reaches that fact and nothing else.)"""
    filler = [turn("Alice", f"The weather report said rain on day {i} of the festival.", T0, i)
              for i in range(2, 30)]
    mem.add([turn("Alice", "Priya finally got the promotion at the hospital!", T0, 1),
             *filler], user_id="alice", session_id="s1")
    q = "How is Priya doing?"
    hybrid = mem.explain(q, user_id="alice", k=3)
    target = "Priya finally got the promotion at the hospital!"
    assert contents(hybrid)[0] == target
    assert "graph" in hybrid.hits[0].routes
    graph = next(s for s in hybrid.explain.stages if s.name == "graph")
    assert graph.total == 1 and graph.detail["entities"] == ["priya"]
    assert [c.id for c in graph.candidates] == [hybrid.hits[0].cube.id]
    top, *rest = hybrid.explain.fused
    assert top.id == hybrid.hits[0].cube.id and top.parts["graph"] > 0
    assert rest and all(not f.parts.get("graph") for f in rest)


def test_time_filter_explicit_date_keeps_only_that_span(mem: MemOS) -> None:
    may, july = datetime(2023, 5, 20, tzinfo=UTC), datetime(2023, 7, 14, tzinfo=UTC)
    mem.add([turn("Alice", "We went hiking in the Alps with Sam.", may, 1)],
            user_id="alice", session_id="s1")
    mem.add([turn("Alice", "We went hiking in the Dolomites with Sam.", july, 2),
             turn("Alice", "I baked bread on Sunday.", july + timedelta(hours=1), 3)],
            user_id="alice", session_id="s2")
    res = mem.explain("Where did we go hiking in July 2023?", user_id="alice", k=5)
    assert contents(res)[0] == "We went hiking in the Dolomites with Sam."
    assert "We went hiking in the Alps with Sam." not in contents(res)
    assert res.explain.time_filter == "hard"
    assert res.explain.time_range.start == datetime(2023, 7, 1, tzinfo=UTC)
    assert res.explain.dropped["time_range"] >= 1
    # the same question about May finds the other hike
    assert contents(mem.search("Where did we go hiking in May 2023?", user_id="alice",
                               k=1)) == ["We went hiking in the Alps with Sam."]


def test_relative_time_weighs_in_without_hiding_the_rest(mem: MemOS) -> None:
    now = datetime.now(UTC)
    mem.add([turn("Alice", "I cooked a lentil curry for dinner.", now - timedelta(days=12), 1)],
            user_id="alice", session_id="s1")
    mem.add([turn("Alice", "I cooked a mushroom risotto for dinner.", now - timedelta(days=1), 2)],
            user_id="alice", session_id="s2")
    res = mem.explain("What did I cook yesterday?", user_id="alice", k=2)
    assert contents(res)[0] == "I cooked a mushroom risotto for dinner."
    assert res.explain.time_filter == "soft" and len(res) == 2
    assert res.explain.fused[0].parts["time"] > 0


def test_before_an_event_resolves_the_event_in_memory(mem: MemOS) -> None:
    mem.add([turn("Alice", "I bought new hiking boots.", T0, 1)], user_id="alice",
            session_id="s1")
    mem.add([turn("Alice", "Booked everything for the Japan trip!", T0 + timedelta(days=10), 2)],
            user_id="alice", session_id="s2")
    mem.add([turn("Alice", "I bought a silk kimono in Kyoto.", T0 + timedelta(days=20), 3)],
            user_id="alice", session_id="s3")
    res = mem.explain("What did I buy before the trip?", user_id="alice", k=3)
    tr = res.explain.time_range
    assert tr.anchor == "the trip" and tr.end == T0 + timedelta(days=10)
    assert contents(res)[0] == "I bought new hiking boots."


def test_superseded_fact_is_not_returned_as_current(mem: MemOS) -> None:
    old = mem.add([turn("Alice", "I live in Lisbon with my dog Miso.", T0, 1)],
                  user_id="alice", session_id="s1")[0]
    move = T0 + timedelta(days=40)
    new = mem.add([turn("Alice", "I moved to Berlin, I no longer live in Lisbon.", move, 2)],
                  user_id="alice", session_id="s2")[0]
    assert new.provenance.derived_from == [old.id]
    hist = mem.history(old.id)
    assert [h.op for h in hist] == ["create", "supersede"]
    gone = hist[-1].cube
    assert gone.lifecycle.state is State.superseded and gone.lifecycle.valid_to == move
    assert gone.metadata["superseded_by"] == new.id

    for mode in ("hybrid", "dense"):
        found = mem.search("Where does Alice live?", user_id="alice", k=5, mode=mode)
        assert old.id not in [h.cube.id for h in found]
        assert found[0].cube.id == new.id
    # what was current before the move
    then = mem.search("Where does Alice live?", user_id="alice", k=5,
                      as_of=T0 + timedelta(days=1))
    assert [h.cube.id for h in then] == [old.id]
    assert mem.vault.graph.lineage(new.id) == [old.id]


def test_alike_turns_without_an_update_signal_are_all_kept(mem: MemOS) -> None:
    turns = [turn("Alice", "Thanks, Bob!", T0 + timedelta(seconds=i), i) for i in range(3)]
    turns += [turn("Alice", "I love painting sunsets.", T0 + timedelta(seconds=9), 9),
              turn("Alice", "I love painting sunsets!", T0 + timedelta(seconds=10), 10)]
    cubes = mem.add(turns, user_id="alice", session_id="s1")
    assert all(c.lifecycle.state is State.active for c in mem.list(user_id="alice"))
    assert len(mem.list(user_id="alice")) == len(cubes)
    # another speaker's update never supersedes Alice's fact
    mem.add([turn("Bob", "I no longer love painting sunsets.", T0 + timedelta(days=1), 11)],
            user_id="alice", session_id="s2")
    assert len(mem.list(user_id="alice")) == len(cubes) + 1


def test_locomo_turns_are_never_merged(mem: MemOS) -> None:
    from memos_agents.formats import read_locomo

    batches = [b for b in read_locomo(LOCOMO) if b.user_id == "conv-30"][:6]
    n = 0
    for b in batches:
        n += len(mem.add(b.messages, user_id=b.user_id, session_id=b.session_id))
    live = mem.list(user_id="conv-30", limit=10_000)
    assert len(live) == n  # nothing superseded, nothing merged
    hits = mem.search("What did Gina find for her clothing store?", user_id="conv-30", k=10)
    assert all(h.cube.provenance.source_refs for h in hits)


def test_scope_isolation_holds_for_every_route(mem: MemOS) -> None:
    for user in ("alice", "bob"):
        mem.add([turn("Carol", "Carol adopted a parrot named Kiwi.", T0, 1),
                 turn("Carol", f"{user} keeps the secret code 4321.", T0, 2)],
                user_id=user, session_id="s1")
    for q in ("Kiwi the parrot", "Carol", "secret code 4321", "What did Carol adopt?"):
        res = mem.explain(q, user_id="alice", k=10)
        assert res.hits and all(h.cube.scope.user_id == "alice" for h in res)
        alice_ids = {c.id for c in mem.list(user_id="alice")}
        for stage in res.explain.stages:
            assert {c.id for c in stage.candidates} <= alice_ids
    assert mem.search("anything", user_id="nobody", k=5) == []


def test_window_carries_neighbouring_turns_as_context(mem: MemOS) -> None:
    cubes = mem.add([turn("Bob", "How was the concert?", T0, 1),
                     turn("Alice", "Amazing, Radiohead played for three hours.", T0, 2),
                     turn("Bob", "Lucky you!", T0, 3),
                     turn("Alice", "Next week I start my pottery class.", T0, 4)],
                    user_id="alice", session_id="s1")
    hits = mem.search("Which band did Alice see?", user_id="alice", k=1, window=1)
    assert hits[0].cube.id == cubes[1].id
    assert [c.id for c in hits[0].context] == [cubes[0].id, cubes[2].id]
    assert mem.search("Which band did Alice see?", user_id="alice", k=1)[0].context == []
    with pytest.raises(InvalidInput):
        mem.search("x", user_id="alice", window=-1)
    with pytest.raises(InvalidInput):
        mem.search("x", user_id="alice", as_of=datetime(2023, 1, 1))


def test_keyword_index_follows_adds_updates_and_deletes(mem: MemOS) -> None:
    first = mem.add("The wifi password is zebra-42.", user_id="alice")[0]
    assert contents(mem.search("zebra-42", user_id="alice", k=1)) == [first.content]
    mem.update(first.id, "The wifi password is giraffe-17.")
    assert mem.search("giraffe-17", user_id="alice", k=1)[0].cube.id == first.id
    assert mem.search("giraffe-17", user_id="alice", k=1)[0].cube.lifecycle.version == 2
    mem.delete(first.id)
    assert mem.search("giraffe-17", user_id="alice", k=5) == []
    later = mem.add("Remember zebra crossings near school.", user_id="alice")[0]
    assert [h.cube.id for h in mem.search("zebra", user_id="alice", k=5)] == [later.id]


def test_dense_mode_scores_are_cosines(mem: MemOS) -> None:
    mem.add(["I like green tea.", "The train leaves at noon."], user_id="alice")
    dense = mem.search("green tea", user_id="alice", k=2, mode="dense")
    plain = mem.vault.search("green tea", Scope(user_id="alice"), 2)
    assert [round(h.score, 4) for h in dense] == [round(h.score, 4) for h in plain]


def test_intent_reading() -> None:
    now = datetime(2023, 6, 20, 12, tzinfo=UTC)
    i = read_intent("When did Melanie paint a sunrise in May 2023?", now)
    assert i.answer_kind == "time" and i.entities == ["Melanie"]
    assert "sunrise" in i.concepts and i.time.start == datetime(2023, 5, 1, tzinfo=UTC)
    assert read_intent("Who called yesterday?", now).time.start == datetime(2023, 6, 19,
                                                                             tzinfo=UTC)
    lw = parse_time_range("what happened last week", now)
    assert lw.relative and lw.end - lw.start == timedelta(days=7)
    assert parse_time_range("on 8 May, 2023", now).start == datetime(2023, 5, 8, tzinfo=UTC)
    assert parse_time_range("since June 2023", now).start == datetime(2023, 6, 1, tzinfo=UTC)
    assert parse_time_range("in June", now).yearless
    assert parse_time_range("May I ask you something?", now) is None
    assert parse_time_range("3 days ago", now).contains(datetime(2023, 6, 17, 9, tzinfo=UTC))
    b = parse_time_range("before the trip to Japan", now)
    assert b.anchor == "the trip to Japan" and b.direction == "before"


def test_a_query_matches_by_what_it_asks_about_not_its_question_words() -> None:
    assert read_intent("What has Melanie done with her kids?").keywords == ["melani", "done",
                                                                            "kid"]
    assert read_intent("Who is he?").keywords == ["who", "he"]  # nothing else: all of them
    # a user's own first person stays: their turns say "my dog"
    assert read_intent("Where does my dog like to go?").keywords == ["my", "dog", "like", "go"]
    # the month stays: "may" is no modal to a keyword search
    assert "may" in read_intent("What did Ana plant in the garden this May?").keywords


def test_question_words_do_not_find_a_turn_by_themselves(mem: MemOS) -> None:
    """A turn that shares only "what", "has", "her" with the question is no keyword hit."""
    chatter = mem.add([turn("Ana", "What has she told her? What has he done?", T0, 1)],
                      user_id="alice", session_id="s1")[0]
    mem.add([turn("Bob", "Melanie painted a lake with the kids.", T0, 2)],
            user_id="alice", session_id="s2")
    found = [h.cube.id for h in mem.search("What has Melanie painted with her kids?",
                                           user_id="alice", k=5, routes=["keyword"])]
    assert found and chatter.id not in found


def test_intent_reads_the_operation_asked_for() -> None:
    cases = {
        "Summarize what Melanie did with her kids": "summarize",
        "Describe Gina's store": "summarize",
        "What has Jon been up to lately?": "summarize",
        "List the books Melanie has read": "list",
        "What books has Melanie read?": "list",
        "What kinds of art does Caroline make?": "list",
        "Where has Melanie camped?": "list",
        "What subject have Caroline and Melanie both painted?": "compare",
        "How has Jon's business changed since March?": "compare",
        "What is Caroline's identity?": "lookup",
        "When did Jon open his studio?": "lookup",
    }
    for q, op in cases.items():
        assert read_intent(q).operation == op, q
    # the verb of a request is not a name
    assert read_intent("Summarize what Melanie did with her kids").entities == ["Melanie"]
    assert read_intent("Describe Gina's store").entities == ["Gina"]
    assert read_intent("Compare how Caroline felt in May and in August").entities == ["Caroline"]


def test_intent_from_a_chat_model_is_merged() -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    llm = FakeListChatModel(responses=[json.dumps({
        "entities": ["Lisbon"], "concepts": ["relocation"], "time_start": "2023-05-01",
        "time_end": "2023-06-01", "answer_kind": "place"})])
    i = read_intent("where did she move to?", datetime(2023, 7, 1, tzinfo=UTC), llm)
    assert i.source == "llm" and "Lisbon" in i.entities and "relocation" in i.concepts
    assert i.time.start == datetime(2023, 5, 1, tzinfo=UTC) and i.answer_kind == "place"
    broken = FakeListChatModel(responses=["no json here"])
    assert read_intent("where?", None, broken).source == "rules"


def _lucene(toks: list[str], query: list[str], n: int, df: Counter[str], avgdl: float,
            k1: float, b: float) -> float:
    """Lucene BM25 of one doc of `n` (document frequencies `df`) for the distinct query terms."""
    tf, norm = Counter(toks), k1 * (1 - b + b * len(toks) / avgdl)
    return sum(math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) * tf[t] / (tf[t] + norm)
               for t in dict.fromkeys(query) if t in tf)


def test_bm25_tail_matches_the_formula_and_follows_new_docs() -> None:
    """Docs added after the BM25 segment was built are scored with the same Lucene formula
    (the segment's statistics plus the tail's), and a new write is seen by the next query."""
    import numpy as np

    from memos_agents.retrieval import Doc, RetrievalConfig, ScopeIndex

    def doc(i: int, text: str) -> Doc:
        return Doc(id=f"c{i}", session=None, created_at=float(i), valid_from=float(i),
                   valid_to=None, expires_at=None, speaker=None, entities=frozenset(),
                   importance=0.5, state="active", keyed=False, tokens=tuple(text.split()),
                   content_hash=i)

    words = ["dog", "miso", "lisbon", "porto", "trip", "paint", "sunrise", "adopt"]
    rng = np.random.default_rng(7)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 7)))) for _ in range(900)]
    idx = ScopeIndex("default", "ana", RetrievalConfig())
    idx.load([doc(i, t) for i, t in enumerate(texts[:600])])
    idx.keyword_scores(["dog"])  # builds the main segment over the first 600
    idx.upsert([doc(i, t) for i, t in enumerate(texts[600:], start=600)])
    query = ["miso", "trip", "miso", "nothing"]
    got = idx.keyword_scores(query)["keyword"]
    assert idx._main_n == 600  # really scored through the tail

    seg = idx._segments["keyword"]

    def expected(tail: list[list[str]]) -> list[float]:
        n = 600 + len(tail)
        df = seg.df + Counter(w for toks in tail for w in set(toks))
        avgdl = (seg.avgdl * 600 + sum(map(len, tail))) / n
        return [_lucene(toks, query, n, df, avgdl, seg.k1, seg.b) for toks in tail]

    tail = [t.split() for t in texts[600:]]
    assert got[600:] == pytest.approx(expected(tail), rel=1e-5)
    idx.upsert([doc(900, "miso miso trip")])
    again = idx.keyword_scores(query)["keyword"]
    assert len(again) == 901 and again[900] > 0
    assert again[600:] == pytest.approx(expected([*tail, ["miso", "miso", "trip"]]), rel=1e-5)


def test_bm25_segment_scores_in_half_precision_match_the_formula(tmp_path) -> None:
    """The main segment keeps its per-term scores in float16 (saved and memory-mapped so) and
    sums them in float32: Lucene BM25 over the distinct query terms to within half precision; a
    float32 segment an older snapshot saved scores the same."""
    import bm25s
    import numpy as np

    from memos_agents.retrieval.bm25 import BM25Segment

    words = ["dog", "miso", "lisbon", "porto", "trip", "paint", "sunrise", "adopt"]
    rng = np.random.default_rng(3)
    docs = [[str(w) for w in rng.choice(words, size=int(rng.integers(1, 9)))] for _ in range(500)]
    seg = BM25Segment(docs, k1=1.2, b=0.75)
    query = ["miso", "trip", "miso", "nothing"]  # a repeated term counts once, as in the tail
    df = Counter(w for d in docs for w in set(d))
    avgdl = sum(map(len, docs)) / len(docs)
    want = [_lucene(d, query, 500, df, avgdl, 1.2, 0.75) for d in docs]
    got = seg.scores(query)
    assert got.dtype == np.float32 and seg.model.scores["data"].dtype == np.float16
    assert got.tolist() == pytest.approx(want, rel=2e-3, abs=1e-3)
    stats = seg.save(tmp_path / "half")
    opened = BM25Segment.opened(tmp_path / "half", stats, k1=1.2, b=0.75)
    assert isinstance(opened.model.scores["data"], np.memmap)
    assert opened.model.scores["data"].dtype == np.float16
    assert opened.scores(query).tolist() == got.tolist()
    vocab: dict[str, int] = {"": 0}
    ids = [[vocab.setdefault(t, len(vocab)) for t in d] for d in docs]
    older = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    older.index((ids, vocab), show_progress=False)
    older.save(str(tmp_path / "single"), show_progress=False)
    single = BM25Segment.opened(tmp_path / "single", stats, k1=1.2, b=0.75)
    assert single.model.scores["data"].dtype == np.float32
    assert single.scores(query).tolist() == pytest.approx(want, rel=1e-5)


def test_graph_route_ranks_an_entitys_facts_by_meaning_not_by_age(mem: MemOS) -> None:
    """The graph route takes every fact of the query's entity and ranks them by the cosine of
    their stored vectors to the query (`graph_entity_facts="dense"`, opt-in): an old fact
    that answers, sharing no word with the question, is first even when the entity has more
    facts than the route keeps; keeping the newest ones (`"newest"`) loses it."""
    later = [turn("Ana", f"The weather on day {i} was grey and the bus was late.", T0, i)
             for i in range(2, 10)]
    mem.add([turn("Ana", "I fired a clay bowl in the kiln.", T0, 1)], user_id="ana",
            session_id="s1")
    mem.add(later, user_id="ana", session_id="s2")
    mem.vault.operator.flush()
    router = mem.vault.router

    def graph_first(mode: str) -> list[str]:
        router.config = router.config.model_copy(update={"graph_entity_facts": mode,
                                                         "candidates": 4})
        return contents(mem.search("What pottery does Ana make?", user_id="ana", k=3,
                                   routes=["graph"]))

    assert graph_first("dense")[0] == "I fired a clay bowl in the kiln."
    assert "I fired a clay bowl in the kiln." not in graph_first("newest")


def test_graph_route_ranks_up_facts_on_both_paths_and_adds_no_bare_entity_facts(
        mem: MemOS) -> None:
    """A question naming a person and a concept: the graph route returns the facts about the
    concept, those that mention the person first (entity -> fact <- concept), and not the
    person's other facts, which share only the name with the question."""
    other = [turn("Ana", f"The weather on day {i} was grey and the bus was late.", T0, i)
             for i in range(3, 9)]
    mem.add([turn("Ben", "My pottery class fired a bowl in the kiln.", T0, 1),
             turn("Ana", "My pottery class glazed a blue vase.", T0, 2), *other],
            user_id="ana", session_id="s1")
    mem.vault.operator.flush()
    res = mem.explain("What did Ana make in pottery class?", user_id="ana", k=5,
                      routes=["graph"])
    assert contents(res.hits) == ["My pottery class glazed a blue vase.",
                                  "My pottery class fired a bowl in the kiln."]
    graph = next(s for s in res.explain.stages if s.name == "graph")
    assert graph.detail["entities"] == ["ana"] and graph.detail["on_both"] == 1
    both, concept_only = res.hits
    assert both.graph_path[0] == "entity:ana" and both.graph_path[-1] == both.cube.id
    assert any(p.startswith("concept:") for p in both.graph_path)
    assert not any(p.startswith("entity:") for p in concept_only.graph_path)


def test_graph_hop_follows_broader_concepts_by_default_not_co_occurrence(mem: MemOS) -> None:
    """"class" hops to the phrase it heads ("pottery class"); "studio" only co-occurs with
    "pottery class", which it reaches with `graph_hop="related"` alone."""
    mem.add(["I joined a pottery class at the studio.", "The pottery class made bowls at the "
             "studio.", "The studio smells of wet clay."], user_id="ana", session_id="s1")
    mem.vault.operator.flush()
    router = mem.vault.router

    def hop_used(query: str) -> list[str]:
        res = mem.explain(query, user_id="ana", k=3)
        return next(s for s in res.explain.stages if s.name == "graph").detail["hop_used"]

    assert hop_used("What did the class make?") == ["potteri class"]
    assert hop_used("What happened at the studio?") == []
    router.config = router.config.model_copy(update={"graph_hop": "related"})
    assert "potteri class" in hop_used("What happened at the studio?")


def test_graph_hop_skips_concepts_as_broad_as_the_fanout_bound(mem: MemOS) -> None:
    """A neighbour concept on more facts than `graph_fanout` is not expanded (its facts would
    cost a scan); a narrow one is."""
    busy = [turn("Ana", f"The studio was busy on day {i}.", T0, i) for i in range(2, 8)]
    mem.add([turn("Ana", "The kiln was busy all night.", T0, 1), *busy],
            user_id="ana", session_id="s1")
    mem.vault.operator.flush()
    router = mem.vault.router

    def hop(fanout: int) -> tuple[list, list]:
        router.config = router.config.model_copy(update={"graph_fanout": fanout,
                                                         "graph_hop": "related"})
        res = mem.explain("How is the kiln?", user_id="ana", k=3)
        graph = next(s for s in res.explain.stages if s.name == "graph")
        return [b for _, b, _, _ in graph.detail["hop"]], graph.detail["hop_used"]

    assert hop(500) == (["busi"], ["busi"])
    assert hop(3) == (["busi"], [])  # "busy" is on 7 facts: related, but not expanded


def test_scope_indexes_beyond_the_cache_bound_are_unloaded_and_come_back_current(
        mem: MemOS) -> None:
    """A process serving many users keeps the scope indexes of the most recently searched
    ones (`scope_cache_docs` documents together): an older scope is unloaded, and its next
    search rebuilds it with every write since, its own process's included."""
    router = mem.vault.router
    router.config = router.config.model_copy(update={"scope_cache_docs": 4})
    for user in ("ana", "ben", "cy"):
        mem.add([f"{user} keeps bees on the roof.", f"{user} bakes rye bread."],
                user_id=user, session_id="s1")
        assert contents(mem.search("bees", user_id=user, k=1)) == [f"{user} keeps bees on "
                                                                   "the roof."]
    assert router.loaded("default", "ana") is None
    assert router.loaded("default", "ben") is not None and router.loaded("default", "cy")
    mem.add(["ana rows a kayak on the fjord."], user_id="ana", session_id="s2")
    assert contents(mem.search("kayak fjord", user_id="ana", k=1)) == [
        "ana rows a kayak on the fjord."]
    assert router.loaded("default", "ana") is not None
    assert router.loaded("default", "ben") is None
    router.config = router.config.model_copy(update={"scope_cache_docs": 1})
    mem.search("bread", user_id="cy", k=1)
    assert router.loaded("default", "cy") is not None  # the one in use stays
    assert router.loaded("default", "ana") is None
