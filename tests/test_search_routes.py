"""Route selection by name, presets, `explain` as its own method, and search that does not depend
on the operator's background thread."""

from __future__ import annotations

import time
import warnings
from datetime import UTC, datetime

import pytest

from memos_agents import MemOS
from memos_agents.cube import Scope
from memos_agents.errors import InvalidInput
from memos_agents.retrieval import PRESETS, ROUTES, RetrievalConfig, RoutedHit, SearchResult
from memos_agents.retrieval.models import Stage
from memos_agents.retrieval.routes import Found, Walk, seed_facts

T0 = datetime(2023, 5, 8, 13, 0, tzinfo=UTC)


def turn(speaker: str, text: str, i: int = 0) -> dict:
    return {"role": "user", "speaker": speaker, "content": text, "id": f"d{i}",
            "timestamp": T0.isoformat()}


def scored(hits) -> list[tuple[str, float]]:
    return [(h.cube.id, h.score) for h in hits]


def _kiln(mem: MemOS) -> None:
    mem.add([turn("Ana", "The kiln was busy all night.", 1),
             turn("Ana", "I glazed three bowls for the market.", 2),
             turn("Bo", "The pottery studio opens at nine.", 3),
             *[turn("Ana", f"The weather was grey on day {i}.", i) for i in range(4, 12)]],
            user_id="ana", session_id="s1")


def test_search_right_after_add_matches_search_after_flush(mem: MemOS) -> None:
    """The operator links concepts on its worker thread; a search of the scope waits for the
    work submitted before it, so it scores the same before and after `flush()`."""
    op = mem.vault.operator
    op.submit(time.sleep, 1.5)  # a busy worker: the concept links of the add come late
    _kiln(mem)
    q = "How is the kiln doing with the bowls?"
    right_after = mem.explain(q, user_id="ana", k=5)
    op.flush()
    settled = mem.explain(q, user_id="ana", k=5)
    assert scored(right_after) == scored(settled)
    graph = [next(s for s in r.explain.stages if s.name == "graph") for r in (right_after,
                                                                               settled)]
    assert graph[0].candidates == graph[1].candidates and graph[1].total > 0


def test_routes_select_by_name_and_dense_mode_is_the_dense_route(mem: MemOS) -> None:
    _kiln(mem)
    q = "kiln bowls"
    dense = mem.search(q, user_id="ana", k=4, mode="dense")
    assert scored(mem.search(q, user_id="ana", k=4, routes=["dense"])) == scored(dense)
    assert scored(mem.vault.search(q, Scope(user_id="ana"), 4)) == scored(dense)
    assert all(h.routes == ["dense"] and h.score == h.dense for h in dense)  # cosines
    hybrid = mem.search(q, user_id="ana", k=4)
    assert scored(mem.search(q, user_id="ana", k=4, routes=list(PRESETS["hybrid"]))) == \
        scored(hybrid)
    assert "walk" in ROUTES and "walk" not in PRESETS["hybrid"]  # opt-in
    kw = mem.explain(q, user_id="ana", k=4, routes=["keyword"])
    assert [s.name for s in kw.explain.stages] == ["keyword", "filter", "fuse", "materialise"]
    assert all(set(h.routes) <= {"keyword", "context", "window"} for h in kw.hits)
    assert kw.hits[0].cube.content in ("The kiln was busy all night.",
                                       "I glazed three bowls for the market.")
    graph = mem.explain("How is the kiln?", user_id="ana", k=4, routes=["graph"])
    assert [s.name for s in graph.explain.stages] == ["graph", "materialise"]
    assert all(h.routes == ["graph"] for h in graph.hits)


def test_bad_route_names_say_which_and_what_is_valid(mem: MemOS) -> None:
    with pytest.raises(InvalidInput) as bad:
        mem.search("x", user_id="ana", routes=["dense", "bm25"])
    assert "'bm25'" in str(bad.value)
    assert all(name in str(bad.value) for name in ROUTES)
    with pytest.raises(InvalidInput):
        mem.search("x", user_id="ana", routes=[])
    with pytest.raises(InvalidInput):
        mem.search("x", user_id="ana", routes="dense")  # a list, not a string
    with pytest.raises(InvalidInput):
        mem.search("x", user_id="ana", mode="dense", routes=["keyword"])
    with pytest.raises(InvalidInput):
        mem.search("x", user_id="ana", mode="sparse")  # type: ignore[arg-type]
    assert set(PRESETS) == {"hybrid", "dense"}


def test_explain_is_its_own_method_and_explain_true_is_a_deprecated_alias(mem: MemOS) -> None:
    _kiln(mem)
    res = mem.explain("How is the kiln?", user_id="ana", k=3)
    assert isinstance(res, SearchResult) and isinstance(res.hits[0], RoutedHit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = mem.search("How is the kiln?", user_id="ana", k=3, explain=True)
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert isinstance(old, SearchResult) and scored(old) == scored(res)
    plain = mem.search("How is the kiln?", user_id="ana", k=3)
    assert isinstance(plain, list) and scored(plain) == scored(res)
    dense = mem.explain("How is the kiln?", user_id="ana", k=3, mode="dense")
    assert [s.name for s in dense.explain.stages] == ["dense", "materialise"]
    assert scored(dense) == scored(mem.search("How is the kiln?", user_id="ana", k=3,
                                              mode="dense"))


async def test_aexplain(mem: MemOS) -> None:
    _kiln(mem)
    res = await mem.aexplain("How is the kiln?", user_id="ana", k=2)
    assert isinstance(res, SearchResult) and len(res) == 2


def test_one_llm_reaches_reader_operator_and_query_intent(data_dir, embedder) -> None:
    import json

    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    llm = FakeListChatModel(responses=[json.dumps({"entities": ["Kiwi"], "concepts": [],
                                                   "answer_kind": "thing"})] * 4)
    with MemOS.open(data_dir, embedder=embedder, llm=llm, graph_idle_timeout=30) as m:
        assert m.reader.llm is llm and m.vault.llm is llm and m.vault.operator.llm is llm
        m.add("I adopted a parrot.", user_id="ana")
        res = m.explain("what did I adopt?", user_id="ana", k=1)
        assert res.explain.intent.source == "llm" and "Kiwi" in res.explain.intent.entities


def _camping(mem: MemOS) -> None:
    mem.add([turn("Ana", "We camped by Lake Tahoe with the Hendersons last summer.", 1),
             turn("Bo", "The Hendersons brought their beagle Biscuit along.", 2),
             turn("Ana", "I glazed three bowls for the market.", 3),
             *[turn("Ana", f"The weather was grey on day {i}.", i) for i in range(4, 12)]],
            user_id="ana", session_id="s1")


def test_walk_route_reaches_a_fact_through_a_name_the_best_hit_shares(mem: MemOS) -> None:
    """The walk starts from the best candidate of the routes before it and the query's own
    names and concepts; it scores facts those lead to (not the seeds), and explain carries
    the path: seed fact -> shared entity -> fact."""
    _camping(mem)
    mem.vault.router.config = RetrievalConfig(walk_seeds=1)
    q = "Where did Ana go camping?"
    res = mem.explain(q, user_id="ana", k=11, routes=["dense", "keyword", "walk"])
    names = [s.name for s in res.explain.stages]
    assert names == ["dense", "keyword", "walk", "filter", "fuse", "materialise"]
    walk = res.explain.stages[2]
    by_text = {c.content: c.id for c in mem.list(user_id="ana", limit=100)}
    seed = by_text["We camped by Lake Tahoe with the Hendersons last summer."]
    target = by_text["The Hendersons brought their beagle Biscuit along."]
    assert walk.detail["seeds"] == [seed]
    assert walk.candidates[0].id == target and seed not in [c.id for c in walk.candidates]
    assert walk.detail["paths"][target] == [seed, "entity:hendersons", target]
    hit = next(h for h in res.hits if h.cube.id == target)
    assert "walk" in hit.routes
    assert "walk" not in [s.name for s in mem.explain(q, user_id="ana", k=3).explain.stages]
    alone = mem.explain(q, user_id="ana", k=3, routes=["walk"])  # no seeds: the query's nodes
    assert [s.name for s in alone.explain.stages] == ["walk", "materialise"]
    assert all(h.routes == ["walk"] for h in alone.hits)


def test_walk_spreads_mass_split_over_edges_and_damped() -> None:
    """Seed fact a -> node x (on a, b) and node y (on a, b, c, d): a splits its mass over its
    two nodes, each node over its facts, so b gets 1/2 * 1/2 over x and 1/2 * 1/4 over y, c
    and d 1/2 * 1/4; damping once per step."""
    w = Walk()
    for fid, nodes in {"a": "xy", "b": "xy", "c": "y", "d": "y"}.items():
        for n in nodes:
            w.link(fid, ("concept", n))
    got = w.spread({"a": 1.0}, {}, steps=2, damping=0.5)
    assert got["b"] == pytest.approx(0.25 * (0.5 * 0.5 + 0.5 * 0.25))
    assert got["c"] == pytest.approx(0.25 * 0.5 * 0.25) == pytest.approx(got["d"])
    assert got["a"] == pytest.approx(got["b"])  # a's mass back to itself (the route drops it)
    assert w.path("b", {"a": 1.0}, {}) == ["a", "concept:x", "b"]
    start = w.spread({}, {("concept", "y"): 1.0}, steps=1, damping=1.0)
    assert start == pytest.approx({f: 0.25 for f in "abcd"})
    assert Walk().spread({"a": 1.0}, {}, steps=2, damping=0.5) == {}


def test_seed_facts_are_the_best_of_every_list_by_reciprocal_rank() -> None:
    """An id on two routes' lists outranks one first on a single list; ids the scope index
    does not hold are not seeds; the weights sum to 1."""

    from types import SimpleNamespace

    idx = SimpleNamespace(pos={"a": 0, "b": 1, "c": 2},
                          docs=[SimpleNamespace(id=c) for c in "abc"])
    st = Stage(name="x", took_ms=0.0)
    dense = Found(route="dense", stage=st, by_id={"a": 0.9, "b": 0.8, "gone": 0.95})
    kw = Found(route="keyword", stage=st, top={"keyword": [(2, 3.0), (1, 2.0), (0, 0.0)]})
    got = seed_facts([dense, kw], idx, 2)  # type: ignore[arg-type]
    assert [c for c, _ in got] == ["b", "a"]
    assert sum(w for _, w in got) == pytest.approx(1.0)
    assert seed_facts([], idx, 3) == []  # type: ignore[arg-type]


def test_graph_neighbour_term_lifts_a_fact_sharing_a_rare_name_with_the_best(mem: MemOS) -> None:
    """Opt-in (`w_graph_neighbour`): a candidate gains from the best candidate it shares a rare
    entity with; explain shows the part and the node and fact it came by; the links are read
    once and kept in the scope index; off by default, and off without the graph route."""
    _camping(mem)
    q = "Where did Ana go camping?"
    by_text = {c.content: c.id for c in mem.list(user_id="ana", limit=100)}
    best = by_text["We camped by Lake Tahoe with the Hendersons last summer."]
    target = by_text["The Hendersons brought their beagle Biscuit along."]
    off = mem.explain(q, user_id="ana", k=11)
    assert all("graph_neighbour" not in f.parts for f in off.explain.fused)
    assert "graph_neighbour" not in off.explain.stages[-2].detail
    mem.vault.router.config = RetrievalConfig(w_graph_neighbour=0.5)
    res = mem.explain(q, user_id="ana", k=11)
    fuse = next(s for s in res.explain.stages if s.name == "fuse")
    assert fuse.detail["graph_neighbour"]["via"][target] == ["entity:hendersons", best]
    part = {f.id: f.parts for f in res.explain.fused}[target]["graph_neighbour"]
    base = {f.id: f for f in off.explain.fused}
    assert part > 0 and res.explain.fused[0].id == best
    rank_on = [f.id for f in res.explain.fused].index(target)
    assert rank_on <= [f.id for f in base.values()].index(target)
    idx = mem.vault.router.loaded("default", "ana")
    assert idx is not None and ("entity", "hendersons") in idx.links[target]
    bare = mem.explain(q, user_id="ana", k=11, routes=["dense", "keyword"])
    assert all("graph_neighbour" not in f.parts for f in bare.explain.fused)


def test_a_question_asking_when_prefers_the_fact_that_says_when(mem: MemOS) -> None:
    """`w_time_stated`: only a question asking when gives the facts whose text says when a part
    of their score; explain shows it; the same words asked as "what" give none."""
    mem.add([turn("Ana", "We went to the pottery fair with my sister.", 1),
             turn("Ana", "We went to the pottery fair two weeks ago.", 2),
             *[turn("Bo", f"The weather was grey on day {i}.", i) for i in range(3, 9)]],
            user_id="ana", session_id="s1")
    by_text = {c.content: c.id for c in mem.list(user_id="ana", limit=100)}
    dated = by_text["We went to the pottery fair two weeks ago."]
    res = mem.explain("When did Ana go to the pottery fair?", user_id="ana", k=5)
    parts = {f.id: f.parts for f in res.explain.fused}
    assert parts[dated]["time_stated"] == pytest.approx(RetrievalConfig().w_time_stated)
    assert parts[by_text["We went to the pottery fair with my sister."]]["time_stated"] == 0
    assert res.hits[0].cube.id == dated
    what = mem.explain("What did Ana do at the pottery fair?", user_id="ana", k=5)
    assert all(not f.parts.get("time_stated") for f in what.explain.fused)


def test_hits_show_the_graph_path_that_found_them(mem: MemOS) -> None:
    """`graph_path`: the entity / concept nodes of the query a graph-found fact holds, then the
    fact; empty for a hit the graph did not find."""
    _kiln(mem)
    hits = mem.search("What did Ana glaze for the market?", user_id="ana", k=5)
    by_text = {h.cube.content: h for h in hits}
    bowls = by_text["I glazed three bowls for the market."]
    assert "graph" in bowls.routes
    assert bowls.graph_path[0] == "entity:ana" and bowls.graph_path[-1] == bowls.cube.id
    assert any(p.startswith("concept:") and "market" in p for p in bowls.graph_path)
    assert all(h.graph_path == [] for h in hits if "graph" not in h.routes)
    plain = mem.search("What did Ana glaze for the market?", user_id="ana", k=5,
                       routes=["dense", "keyword"])
    assert all(h.graph_path == [] for h in plain)


def test_a_time_range_holds_facts_that_tell_of_it_not_only_those_said_in_it(mem: MemOS) -> None:
    """A fact said on 15 May about "last week" is in a question's range "on 9 May 2023" (the
    operator resolved its time); one said that day about nothing dated is not."""
    said = datetime(2023, 5, 15, 10, tzinfo=UTC).isoformat()
    mem.add([{"role": "user", "speaker": "Ana", "content": c, "timestamp": said}
             for c in ("I went to the pottery fair last week.", "I love the pottery fair.")],
            user_id="ana", session_id="s2")
    mem.add([{"role": "user", "speaker": "Ana", "content": "The kiln is cold.",
              "timestamp": datetime(2023, 5, 9, 10, tzinfo=UTC).isoformat()}],
            user_id="ana", session_id="s1")
    res = mem.explain("What did Ana do on 9 May 2023 at the pottery fair?", user_id="ana", k=5)
    assert res.explain.time_filter == "hard"
    texts = [h.cube.content for h in res.hits]
    assert "I went to the pottery fair last week." in texts
    assert "I love the pottery fair." not in texts and "The kiln is cold." in texts


def test_the_dense_route_runs_beside_the_index_routes_and_its_errors_reach_the_caller(
        mem: MemOS) -> None:
    """A hybrid search runs the dense route on the router's thread while the calling thread
    runs the keyword and graph routes; the hits are those of the same routes one after
    another, and a failure of the dense route is the search's error."""
    import threading

    from memos_agents.errors import StoreError

    _kiln(mem)
    router = mem.vault.router
    dense = router.routes["dense"]
    q = "How is the kiln doing with the bowls?"
    threads: list[str] = []
    find = dense.find

    def recorded(*a, **kw):
        threads.append(threading.current_thread().name)
        return find(*a, **kw)

    dense.find = recorded  # type: ignore[method-assign]
    beside = scored(mem.search(q, user_id="ana", k=5))
    assert threads and threads[-1].startswith("memos-route")
    router._beside = lambda q, routes: []  # type: ignore[method-assign]
    try:
        one_by_one = scored(mem.search(q, user_id="ana", k=5))
    finally:
        del router._beside
    assert threads[-1] == threading.current_thread().name
    assert one_by_one == beside

    def broken(*a, **kw):
        raise StoreError("chroma is down")

    dense.find = broken  # type: ignore[method-assign]
    with pytest.raises(StoreError, match="chroma is down"):
        mem.search(q, user_id="ana", k=5)
    del dense.find
    assert scored(mem.search(q, user_id="ana", k=5)) == beside
