"""The greedy re-ranking loop shared by the fairness and diversity passes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from llmrank_spark.metrics import (
    ITEM,
    RANK,
    REQUEST,
)

SCORE = "score"


def relevance_order(lists: pd.DataFrame) -> pd.DataFrame:
    """Lists sorted best first: score descending, then the input rank if any, then item_id."""
    missing = [c for c in (REQUEST, ITEM, SCORE) if c not in lists.columns]
    if missing:
        raise ValueError(f"re-ranking: lists lack columns {missing}; pass the ranked table's rows")
    keys = [REQUEST, SCORE, *([RANK] if RANK in lists.columns else []), ITEM]
    ascending = [key != SCORE for key in keys]
    return lists.sort_values(keys, ascending=ascending, kind="mergesort").reset_index(drop=True)


Objective = Callable[[np.ndarray, np.ndarray], np.ndarray]


def greedy_order(n: int, k: int, objective: Objective) -> list[int]:
    """Positions picked one by one by highest objective(picked, available); ties to the lower position."""
    picked: list[int] = []
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        values = np.where(available, objective(np.asarray(picked, dtype=int), available), -np.inf)
        best = int(np.argmax(values))
        picked.append(best)
        available[best] = False
    return picked


def reorder_each(
    lists: pd.DataFrame, permute: Callable[[pd.DataFrame], Sequence[int]], keep_top: int = 0
) -> pd.DataFrame:
    """Each request's list, best first, re-ordered by `permute` and cut to the positions it returns.

    `permute` gets one list best first (index 0..n-1) after its first `keep_top` rows, which stay where
    they are, and returns the positions of that remainder in their new order. `rank` becomes the new
    1-based position.
    """
    if keep_top < 0:
        raise ValueError(f"re-ranking: keep_top must be at least 0, got {keep_top}")
    ordered = relevance_order(lists)
    pieces = []
    for _, one in ordered.groupby(REQUEST, sort=False):
        one = one.reset_index(drop=True)
        kept = min(keep_top, len(one))
        rest = [kept + int(i) for i in permute(one.iloc[kept:].reset_index(drop=True))]
        picked = [*range(kept), *rest]
        pieces.append(one.iloc[picked].assign(**{RANK: np.arange(1, len(picked) + 1, dtype=np.int32)}))
    if not pieces:
        return ordered.assign(**{RANK: pd.Series(dtype=np.int32)})
    return pd.concat(pieces, ignore_index=True)


def rerank_each(lists: pd.DataFrame, k: int, order_one: Callable[[pd.DataFrame], Objective]) -> pd.DataFrame:
    """Each request's list re-ranked greedily and cut to k; `rank` becomes the new 1-based position."""
    if k < 1:
        raise ValueError(f"re-ranking: k must be at least 1, got {k}")
    return reorder_each(lists, lambda one: greedy_order(len(one), k, order_one(one)))


def within_list_relevance(lists: pd.DataFrame) -> pd.Series:
    """Each row's score min-max scaled to [0, 1] within its request's list (0 for a list of equal scores),
    so one boost means the same share of a list's score range in every list."""
    by_request = lists.groupby(REQUEST)[SCORE]
    low, spread = by_request.transform("min"), by_request.transform("max") - by_request.transform("min")
    return ((lists[SCORE] - low) / spread.where(spread > 0)).fillna(0.0)
