"""Fusion as pure functions over arrays aligned with the candidate pool (one row per candidate).

    signals   each route's scores of the pool: dense (cosines), keyword / context / window (BM25),
              graph (matches); weighted: each scaled to [0, 1] over the pool (dense from its
              minimum, the others from 0) and averaged by weight; rrf: weighted reciprocal ranks
    terms     added to that base: prev_dense (the previous turn's dense part), neighbour (the
              best base score of a turn's session neighbours), graph_neighbour (the best base
              score of a candidate it shares a rare entity / concept with, times that node's
              rarity), entity, time, recency, importance

Nothing here knows docs, scopes or stores; `Router` builds the arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Located = tuple[np.ndarray, np.ndarray]
"""(position in the pool, whether the target is in the pool) per pool row."""


@dataclass
class Terms:
    """The non-route inputs of fusion, aligned with the pool."""

    prev: Located | None = None  # each row's previous session turn
    next: Located | None = None  # each row's next session turn
    entity: np.ndarray | None = None  # entity match per row (`ScopeIndex.entity_match`)
    in_range: np.ndarray | None = None  # inside the query's time range
    anchored: bool = False  # the time range is "before / after <event>"
    times: np.ndarray | None = None  # valid_from per row
    importance: np.ndarray | None = None
    shared: Shared | None = None  # rare graph nodes shared by candidates (`graph_neighbour`)
    dated: np.ndarray | None = None  # the row says when; set when the query asks when


@dataclass
class Shared:
    """Graph nodes each linked to two or more pool rows: each node's rows and its rarity in
    (0, 1] (1 / (facts on it - 1): a node on just two facts links them fully)."""

    groups: list[np.ndarray]
    rarity: np.ndarray
    names: list[str]
    via: np.ndarray | None = None  # filled by fusion: per row, the node its gain came by
    src: np.ndarray | None = None  # and the row it came from (-1: none)


def locate(rows: np.ndarray, targets: np.ndarray) -> Located:
    """Where each of `targets` sits in the sorted `rows` (targets < 0: none)."""
    m = len(rows)
    at = np.minimum(np.searchsorted(rows, targets), m - 1)
    return at, (targets >= 0) & (rows[at] == targets)


def weighted(
    m: int, signals: Mapping[str, np.ndarray], weights: Mapping[str, float],
    from_min: Sequence[str] = ("dense",),
) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """Sum of weight * signal scaled to [0, 1] over the `m` pool rows, with the total weight of
    the signals that had a say. A signal scaled from 0 that found nothing (max <= 0) has none;
    a flat one counts fully."""
    base = np.zeros(m)
    parts: dict[str, np.ndarray] = {}
    active = 0.0
    for name, arr in signals.items():
        lo = arr.min() if name in from_min else 0.0
        hi = arr.max()
        if hi <= lo:
            if hi <= 0 and name not in from_min:
                continue  # the route found nothing: no say in the ranking
            scaled = np.ones(m)
        else:
            scaled = (arr - lo) / (hi - lo)
        parts[name] = weights[name] * scaled
        base += parts[name]
        active += weights[name]
    return base, parts, active


def rrf(
    m: int, signals: Mapping[str, np.ndarray], weights: Mapping[str, float], k: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weighted reciprocal rank fusion over the `m` pool rows, scaled so that first on every
    signal is 1."""
    total = np.zeros(m)
    parts: dict[str, np.ndarray] = {}
    for name, arr in signals.items():
        ranks = np.empty(m)
        ranks[np.argsort(-arr, kind="stable")] = np.arange(m)
        parts[name] = weights[name] / (k + 1 + ranks)
        total += parts[name]
    norm = sum(weights[n] for n in signals) / (k + 1)
    return total / norm, parts


def prev_term(dense_part: np.ndarray, prev: Located, w: float, w_dense: float) -> np.ndarray:
    """The previous turn's dense part, as a share of the dense weight, times `w`."""
    at, ok = prev
    return w * np.where(ok, dense_part[at], 0.0) / max(w_dense, 1e-9)


def neighbour_term(base: np.ndarray, prev: Located, nxt: Located, w: float) -> np.ndarray:
    """`w` times the better base score of a row's previous and next turn (0 without any)."""
    (ap, okp), (an, okn) = prev, nxt
    nb = np.maximum(np.where(okp, base[ap], -np.inf), np.where(okn, base[an], -np.inf))
    return w * np.where(np.isneginf(nb), 0.0, nb)


def graph_neighbour_term(base: np.ndarray, shared: Shared, w: float
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`w` times, per row, the best of rarity(node) * base score of another row on that node,
    over the nodes the row is on (0 without any); with the node (index into `shared`) and the
    row each best came from (-1: none)."""
    m = len(base)
    best = np.zeros(m)
    via = np.full(m, -1, dtype=np.int64)
    src = np.full(m, -1, dtype=np.int64)
    for g, rows in enumerate(shared.groups):
        order = np.argsort(-base[rows], kind="stable")
        first, second = rows[order[0]], rows[order[1]]
        other = np.where(rows == first, second, first)  # each row's best other row
        gain = shared.rarity[g] * base[other]
        better = gain > best[rows]
        best[rows[better]] = gain[better]
        via[rows[better]] = g
        src[rows[better]] = other[better]
    return w * best, via, src


def recency_term(times: np.ndarray, w: float) -> np.ndarray:
    """`w` times each row's place between the oldest and the newest row."""
    span = max(times.max() - times.min(), 1.0)
    return w * (times - times.min()) / span


def _add_terms(fused: np.ndarray, base: np.ndarray, parts: dict[str, np.ndarray],
               terms: Terms, w: Mapping[str, float]) -> None:
    m = len(base)
    if w["neighbour"] and m > 1 and terms.prev is not None and terms.next is not None:
        parts["neighbour"] = neighbour_term(base, terms.prev, terms.next, w["neighbour"])
        fused += parts["neighbour"]
    if w.get("graph_neighbour") and m > 1 and terms.shared is not None and terms.shared.groups:
        sh = terms.shared
        parts["graph_neighbour"], sh.via, sh.src = graph_neighbour_term(base, sh,
                                                                        w["graph_neighbour"])
        fused += parts["graph_neighbour"]
    ent = terms.entity
    if ent is not None and w["entity"] and ent.max() > ent.min():
        parts["entity"] = w["entity"] * ent
        fused += parts["entity"]
    in_range = terms.in_range
    if in_range is not None and in_range.any() and not in_range.all() and w["time"]:
        # "before / after <event>" is a constraint of the question itself: weigh it more
        wt = w["time"] * (2.0 if terms.anchored else 1.0)
        parts["time"] = wt * in_range.astype(np.float64)
        fused += parts["time"]
    dated = terms.dated
    if dated is not None and w.get("time_stated") and dated.any() and not dated.all():
        parts["time_stated"] = w["time_stated"] * dated.astype(np.float64)
        fused += parts["time_stated"]
    if w["recency"] and terms.times is not None:
        parts["recency"] = recency_term(terms.times, w["recency"])
        fused += parts["recency"]
    if w["importance"] and terms.importance is not None:
        parts["importance"] = w["importance"] * terms.importance
        fused += parts["importance"]


def fuse(
    m: int,
    signals: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    terms: Terms,
    term_weights: Mapping[str, float],
    method: str = "weighted",
    rrf_k: int = 60,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The fused score of each of the `m` pool rows, and each signal's and term's part of it.
    `term_weights`: prev_dense, neighbour, entity, time, recency, importance, and optionally
    graph_neighbour."""
    if m == 0:
        return np.zeros(0), {}
    if method == "rrf":
        base, parts = rrf(m, signals, weights, rrf_k)
    else:
        base, parts, active = weighted(m, signals, weights)
        if "dense" in parts and term_weights["prev_dense"] and terms.prev is not None:
            parts["prev_dense"] = prev_term(parts["dense"], terms.prev,
                                            term_weights["prev_dense"], weights["dense"])
            base += parts["prev_dense"]
        base = base / max(active, 1e-9)
    fused = base.copy()
    _add_terms(fused, base, parts, terms, term_weights)
    return fused, parts
