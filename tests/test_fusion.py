"""Fusion alone: pure functions over arrays, no store, no model."""

from __future__ import annotations

import numpy as np
import pytest

from memos_agents.retrieval import fusion
from memos_agents.retrieval.fusion import Terms

W = {"dense": 1.0, "keyword": 1.0, "context": 1.0, "window": 0.5, "graph": 0.6}
NO_TERMS = {"prev_dense": 0.0, "neighbour": 0.0, "entity": 0.0, "time": 0.0, "recency": 0.0,
            "importance": 0.0}


def test_weighted_scales_each_signal_over_the_pool() -> None:
    signals = {"dense": np.array([0.2, 0.4, 0.6]), "keyword": np.array([0.0, 4.0, 2.0])}
    base, parts, active = fusion.weighted(3, signals, W)
    # dense from its minimum, keyword from 0
    assert parts["dense"] == pytest.approx([0.0, 0.5, 1.0])
    assert parts["keyword"] == pytest.approx([0.0, 1.0, 0.5])
    assert base == pytest.approx([0.0, 1.5, 1.5]) and active == 2.0


def test_weighted_a_route_that_found_nothing_has_no_say() -> None:
    signals = {"dense": np.array([0.3, 0.3]), "keyword": np.zeros(2),
               "graph": np.array([0, 2.0])}
    _, parts, active = fusion.weighted(2, signals, W)
    assert "keyword" not in parts
    assert parts["dense"] == pytest.approx([1.0, 1.0])  # flat dense: full weight everywhere
    assert parts["graph"] == pytest.approx([0.0, 0.6])
    assert active == pytest.approx(1.6)


def test_rrf_first_everywhere_is_one() -> None:
    signals = {"dense": np.array([0.9, 0.1, 0.5]), "keyword": np.array([3.0, 0.0, 1.0])}
    base, parts = fusion.rrf(3, signals, W, k=60)
    assert base[0] == pytest.approx(1.0)
    assert base[0] > base[2] > base[1]
    assert parts["dense"][1] == pytest.approx(1.0 / 63)


def test_locate_finds_neighbours_in_the_pool() -> None:
    rows = np.array([2, 5, 9])
    at, ok = fusion.locate(rows, np.array([5, -1, 7]))
    assert ok.tolist() == [True, False, False] and at[0] == 1


def test_neighbour_and_prev_terms() -> None:
    base = np.array([0.2, 0.8, 0.4])
    prev = (np.array([0, 0, 1]), np.array([False, True, True]))
    nxt = (np.array([1, 2, 2]), np.array([True, True, False]))
    assert fusion.neighbour_term(base, prev, nxt, 0.5) == pytest.approx([0.4, 0.2, 0.4])
    assert fusion.prev_term(np.array([1.0, 0.5, 0.0]), prev, 0.3, 1.0) == \
        pytest.approx([0.0, 0.3, 0.15])


def test_fuse_adds_the_terms_to_the_base() -> None:
    signals = {"dense": np.array([0.1, 0.9, 0.5])}
    terms = Terms(in_range=np.array([True, False, False]), anchored=True,
                  times=np.array([0.0, 10.0, 5.0]), importance=np.array([0.5, 0.5, 1.0]))
    tw = {**NO_TERMS, "time": 0.5, "recency": 0.2, "importance": 0.1}
    fused, parts = fusion.fuse(3, signals, W, terms, tw)
    assert parts["time"] == pytest.approx([1.0, 0.0, 0.0])  # anchored: twice the weight
    assert parts["recency"] == pytest.approx([0.0, 0.2, 0.1])
    assert fused == pytest.approx([0.0 + 1.0 + 0.05, 1.0 + 0.2 + 0.05, 0.5 + 0.1 + 0.1])


def test_fuse_time_that_holds_everything_or_nothing_does_not_weigh_in() -> None:
    signals = {"dense": np.array([0.1, 0.9])}
    for in_range in ([True, True], [False, False]):
        _, parts = fusion.fuse(2, signals, W, Terms(in_range=np.array(in_range)),
                               {**NO_TERMS, "time": 0.5})
        assert "time" not in parts


def test_fuse_of_an_empty_pool() -> None:
    fused, parts = fusion.fuse(0, {}, W, Terms(), NO_TERMS)
    assert len(fused) == 0 and parts == {}


def test_graph_neighbour_term_takes_the_best_other_row_times_rarity() -> None:
    base = np.array([0.9, 0.2, 0.5, 0.1])
    shared = fusion.Shared(groups=[np.array([0, 1]), np.array([1, 2, 3])],
                           rarity=np.array([1.0, 0.5]), names=["entity:a", "concept:b c"])
    term, via, src = fusion.graph_neighbour_term(base, shared, 0.5)
    # row 0: from row 1 via a (0.2); row 1: from 0 via a (0.9) beats 0.5 * 0.5 via b
    # row 2: best other on b is row 1 (0.2) * 0.5; row 3: row 2 (0.5) * 0.5
    assert term == pytest.approx([0.5 * 0.2, 0.5 * 0.9, 0.5 * 0.1, 0.5 * 0.25])
    assert via.tolist() == [0, 0, 1, 1] and src.tolist() == [1, 0, 1, 2]


def test_fuse_adds_the_graph_neighbour_term_only_when_weighted() -> None:
    signals = {"dense": np.array([0.0, 1.0, 0.5])}
    shared = fusion.Shared(groups=[np.array([0, 1])], rarity=np.array([1.0]), names=["x"])
    terms = Terms(shared=shared)
    fused, parts = fusion.fuse(3, signals, W, terms, {**NO_TERMS, "graph_neighbour": 0.5})
    assert parts["graph_neighbour"] == pytest.approx([0.5, 0.0, 0.0])
    assert fused == pytest.approx([0.5, 1.0, 0.5])
    assert shared.via is not None and shared.via.tolist() == [0, -1, -1]  # a 0 gain: none
    _, parts = fusion.fuse(3, signals, W, Terms(shared=shared), NO_TERMS)
    assert "graph_neighbour" not in parts  # no weight: off (NO_TERMS has none)


def test_fuse_time_stated_only_when_some_rows_say_when() -> None:
    signals = {"dense": np.array([0.5, 0.5, 0.1])}
    tw = {**NO_TERMS, "time_stated": 0.05}
    fused, parts = fusion.fuse(3, signals, W, Terms(dated=np.array([False, True, False])), tw)
    assert parts["time_stated"] == pytest.approx([0.0, 0.05, 0.0]) and fused[1] > fused[0]
    for dated in ([True, True, True], [False, False, False]):
        _, parts = fusion.fuse(3, signals, W, Terms(dated=np.array(dated)), tw)
        assert "time_stated" not in parts
