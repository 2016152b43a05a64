"""Training lists from search queries: graded `query_labels` over each query's retrieved candidates.

A query list is judged by people (or a judging model), not inferred from behaviour: every item has a
grade, so a list can teach the order among relevant items (all values matched vs some), which one
clicked target among negatives cannot. Queries are split by a hash of their id into the ones the model
trains on and the held-out ones it never sees, on which the train step decides whether the version may
rank queries at all (`query_verdict`).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from llmrank_spark.training.lists import ITEM, LABEL, LIST

QUERY_LIST_PREFIX = "query:"  # list ids of query lists, apart from the users' "<user>@<item>" lists


def heldout_queries(query_ids: pd.Series, share: float) -> pd.Series:
    """True for the queries held out of training: a stable hash of the id, so a query stays on its side
    from one training run to the next (a version never trains on the queries that judged its parent)."""
    buckets = query_ids.map(lambda query_id: zlib.crc32(str(query_id).encode()) % 1000)
    return buckets < round(share * 1000)


def query_grades(labels: pd.DataFrame) -> pd.DataFrame:
    """(query_id, item_id, label) with each judgement scaled to [0, 1] by the highest grade in the table,
    the scale of the users' event grades."""
    top = float(labels["relevance"].max()) if len(labels) else 1.0
    return pd.DataFrame(
        {
            "query_id": labels["query_id"].to_numpy(),
            ITEM: labels[ITEM].to_numpy(),
            LABEL: labels["relevance"].to_numpy(dtype=np.float64) / max(top, 1.0),
        }
    )


def sample_query_lists(
    graded: pd.DataFrame, candidates: pd.DataFrame, list_size: int, rng: np.random.Generator
) -> pd.DataFrame:
    """(list_id, query_id, item_id, label) rows, `list_size` per query with a grade spread.

    Each list holds one of the query's best-graded items, then half of the other places from its
    retrieved candidates (what the reranker will have to order: mostly relevant, in several grades) and
    the rest from its judged items no retriever proposed (the clear misses), topped up from either when one
    runs short. An item nobody judged has grade 0. Queries whose items would all share one grade teach
    nothing and give no list.
    """
    grade_of = graded.set_index(["query_id", ITEM])[LABEL]
    retrieved = candidates.groupby("request_id")[ITEM].agg(list)
    judged = graded.groupby("query_id")[ITEM].agg(list)
    rows = []
    for query_id in sorted(set(retrieved.index) | set(judged.index)):
        proposed = list(retrieved.get(query_id, []))
        in_proposed = set(proposed)
        missed = [item for item in judged.get(query_id, []) if item not in in_proposed]
        pool = proposed + missed
        grades = np.array([grade_of.get((query_id, item), 0.0) for item in pool])
        if len(pool) < list_size or np.all(grades == grades[0]):
            continue
        best = np.flatnonzero(grades == grades.max())
        first = int(rng.choice(best))
        rest_proposed = [i for i in range(len(proposed)) if i != first]
        rest_missed = [i for i in range(len(proposed), len(pool)) if i != first]
        from_proposed = min(len(rest_proposed), max(list_size // 2, list_size - 1 - len(rest_missed)))
        chosen = [
            first,
            *rng.choice(rest_proposed, from_proposed, replace=False),
            *rng.choice(rest_missed, list_size - 1 - from_proposed, replace=False),
        ]
        rows += [(f"{QUERY_LIST_PREFIX}{query_id}", query_id, pool[i], float(grades[i])) for i in chosen]
    return pd.DataFrame(rows, columns=[LIST, "query_id", ITEM, LABEL])


def served_query_lists(graded: pd.DataFrame, candidates: pd.DataFrame) -> pd.DataFrame:
    """(list_id, query_id, item_id, label, retrieval_rank) of every query's whole candidate list, as the
    rerank step would order it: what the held-out verdict measures retrieval and the version on."""
    lists = candidates[["request_id", ITEM, "retrieval_rank"]].rename(columns={"request_id": "query_id"})
    lists = lists.merge(graded, on=["query_id", ITEM], how="left").fillna({LABEL: 0.0})
    lists = lists.sort_values(["query_id", "retrieval_rank"], kind="mergesort", ignore_index=True)
    return lists.assign(**{LIST: QUERY_LIST_PREFIX + lists["query_id"].astype(str)})
