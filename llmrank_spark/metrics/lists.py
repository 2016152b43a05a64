"""Ranked lists and labels as the metrics take them: their checks and the top-k cut."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

REQUEST, ITEM, RANK, RELEVANCE = "request_id", "item_id", "rank", "relevance"


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing} (has {list(frame.columns)}); add or rename them")


def check_lists(ranked: pd.DataFrame) -> None:
    """Fail, naming the request, unless every list holds each item once at ranks exactly 1..n.

    Precision-at-rank and coverage-style counts are only right on such lists; lists cut by a filter
    must be renumbered first (e.g. ``groupby(request_id).rank.rank(method="first")``).
    """
    require_columns(ranked, [REQUEST, ITEM, RANK], "ranked lists")
    duplicated = ranked.duplicated([REQUEST, ITEM])
    if duplicated.any():
        row = ranked[duplicated].iloc[0]
        raise ValueError(
            f"ranked lists: item '{row[ITEM]}' appears more than once in request '{row[REQUEST]}'; "
            f"deduplicate the list"
        )
    shape = ranked.groupby(REQUEST)[RANK].agg(["min", "max", "size", "nunique"])
    bad = shape[(shape["min"] != 1) | (shape["max"] != shape["size"]) | (shape["nunique"] != shape["size"])]
    if len(bad):
        request, row = next(iter(bad.iterrows()))
        raise ValueError(
            f"ranked lists: request '{request}' has ranks {row['min']}..{row['max']} over {row['size']} "
            f"items, not 1..n; renumber its ranks"
        )


def check_labels(labels: pd.DataFrame) -> None:
    require_columns(labels, [REQUEST, ITEM, RELEVANCE], "labels")
    if labels.duplicated([REQUEST, ITEM]).any():
        row = labels[labels.duplicated([REQUEST, ITEM])].iloc[0]
        raise ValueError(f"labels: request '{row[REQUEST]}' judges item '{row[ITEM]}' twice; keep one label")
    relevance = labels[RELEVANCE].to_numpy(dtype=float)
    if not np.all(np.isfinite(relevance) & (relevance >= 0)):
        raise ValueError("labels: relevance must be a finite number >= 0 (0 = irrelevant); fix the labels")


def top_k(ranked: pd.DataFrame, k: int | None) -> pd.DataFrame:
    return ranked if k is None else ranked[ranked[RANK] <= k]


def position_discount(rank: pd.Series | np.ndarray) -> np.ndarray:
    """1 / log2(1 + rank): the attention a position gets, shared by DCG and exposure."""
    return 1.0 / np.log2(1.0 + np.asarray(rank, dtype=float))


def judged_top_k(
    ranked: pd.DataFrame, labels: pd.DataFrame, k: int | None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Index]:
    """Top-k rows with their relevance, the labels, and the evaluated request ids (see the module doc)."""
    check_lists(ranked)
    check_labels(labels)
    relevant_requests = labels.loc[labels[RELEVANCE] > 0, REQUEST].unique()
    evaluated = pd.Index(ranked[REQUEST].unique(), name=REQUEST).intersection(relevant_requests)
    lists = top_k(ranked, k)
    judged = lists.loc[lists[REQUEST].isin(evaluated), [REQUEST, ITEM, RANK]].merge(
        labels[[REQUEST, ITEM, RELEVANCE]], on=[REQUEST, ITEM], how="left"
    )
    judged[RELEVANCE] = judged[RELEVANCE].fillna(0.0).astype(float)
    return judged, labels[labels[REQUEST].isin(evaluated)], evaluated


def per_request(values: pd.Series, evaluated: pd.Index) -> pd.Series:
    """Values for every evaluated request: a request with no hit scores 0, not missing."""
    return values.reindex(evaluated, fill_value=0.0).astype(float)
