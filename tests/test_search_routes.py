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
from memos_agents.retrieval import PRESETS, ROUTES, RoutedHit, SearchResult

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
    assert scored(mem.search(q, user_id="ana", k=4, routes=list(ROUTES))) == scored(hybrid)
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
