"""Exact nearest items for a batch of query vectors: one matrix product per chunk of users against
the shipped item matrix, already-seen items masked out."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import CandidatesConfig
from llmrank_spark.lakehouse.shipping import load_shipped_arrays, ship_arrays
from llmrank_spark.retrieval.retrieved import RETRIEVED_SCHEMA, tag_source

# Scores of one chunk of users against the whole item matrix stay near this many float32 cells (256 MiB).
SCORE_CELLS_PER_CHUNK = 1 << 26

# ---- pure functions over numpy / pandas batches -------------------------------------------------------


def positions(item_ids: np.ndarray, wanted: Sequence[str] | np.ndarray) -> np.ndarray:
    """Row of each wanted id in the sorted `item_ids`, -1 where it is absent."""
    wanted = np.asarray(list(wanted), dtype=object)
    if len(item_ids) == 0 or len(wanted) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    found = np.searchsorted(item_ids, wanted).clip(max=len(item_ids) - 1)
    return np.where(item_ids[found] == wanted, found, -1)


def top_k(scores: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the column indices of the k highest finite scores, best first, equal scores by lower index.

    np.partition finds each row's k-th best score in linear time; only the columns at or above it are sorted.
    """
    k = min(k, scores.shape[1])
    if k == 0:
        return [np.empty(0, dtype=np.int64) for _ in range(scores.shape[0])]
    kth_best = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    chosen = []
    for row, threshold in zip(scores, kth_best, strict=True):
        columns = (
            np.flatnonzero(row >= threshold) if np.isfinite(threshold) else np.flatnonzero(np.isfinite(row))
        )
        best = columns[np.lexsort((columns, -row[columns]))][:k]
        chosen.append(best)
    return chosen


RETRIEVED_DTYPES = {
    "request_id": object,
    "item_id": object,
    "source_score": np.float64,
    "source_rank": np.int32,
}


def rank_against(
    request_ids: Sequence[str],
    queries: np.ndarray,
    excluded: Sequence[Sequence[str] | None],
    item_ids: np.ndarray,
    matrix: np.ndarray,
    k: int,
) -> pd.DataFrame:
    """Each request's k best items by dot product of its query with the item matrix, excluded items masked.

    `item_ids` is sorted and row i of `matrix` belongs to item_ids[i], so ties fall to the lower item_id.
    """
    scores = queries.astype(np.float32) @ matrix.T
    for row, items in enumerate(excluded):
        if items is not None and len(items):
            found = positions(item_ids, items)
            scores[row, found[found >= 0]] = -np.inf
    return retrieved_frame(
        [
            (request_id, item_ids[best], row[best])
            for request_id, row, best in zip(request_ids, scores, top_k(scores, k), strict=True)
        ]
    )


def retrieved_frame(lists: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """(request_id, item_id, source_score, source_rank) rows from (request_id, item ids best first, their
    scores) per request; typed and empty when there is none."""
    if not lists:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in RETRIEVED_DTYPES.items()})
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "request_id": request_id,
                    "item_id": items,
                    "source_score": scores.astype(np.float64),
                    "source_rank": np.arange(1, len(items) + 1, dtype=np.int32),
                }
            )
            for request_id, items, scores in lists
        ],
        ignore_index=True,
    )


def recency_profiles(histories: Sequence, item_ids: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Unit-length weighted mean of each user's history vectors; `histories` holds (item_id, weight) lists."""
    profiles = np.zeros((len(histories), matrix.shape[1]), dtype=np.float32)
    for row, history in enumerate(histories):
        ids = [entry["item_id"] for entry in history]
        weights = np.array([entry["weight"] for entry in history], dtype=np.float64)
        found = positions(item_ids, ids)
        known = found >= 0
        if known.any() and weights[known].sum() > 0:
            mean = weights[known] @ matrix[found[known]].astype(np.float64) / weights[known].sum()
            norm = np.linalg.norm(mean)
            profiles[row] = mean / norm if norm > 0 else mean
    return profiles


def factor_queries(batch: pd.DataFrame, item_ids: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """ALS user factors as queries: the dot product with item factors is ALS's predicted preference."""
    return np.stack(batch["features"].to_numpy()).astype(np.float32)


def profile_queries(batch: pd.DataFrame, item_ids: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Semantic queries: each user's recency-weighted profile of their history's text vectors."""
    return recency_profiles(batch["history"].tolist(), item_ids, matrix)


QueryBuilder = Callable[[pd.DataFrame, np.ndarray, np.ndarray], np.ndarray]


def collect_matrix(vectors: DataFrame, column: str, cfg: CandidatesConfig, what: str) -> tuple:
    """(sorted item ids, float32 matrix) on the driver, refusing catalogues over `broadcast_max_items`."""
    count = vectors.count()
    if count > cfg.broadcast_max_items:
        raise ValueError(
            f"{what}: {count:,} item vectors exceed candidates.broadcast_max_items "
            f"({cfg.broadcast_max_items:,}), the most this job collects and broadcasts; raise it only if "
            f"every executor has room for the matrix, else block the catalogue by category"
        )
    local: pd.DataFrame = vectors.select("item_id", column).toPandas()
    local = local.sort_values("item_id", kind="mergesort")
    item_ids = local["item_id"].to_numpy(dtype=object)
    width = len(local[column].iloc[0]) if count else 0
    matrix = (
        np.stack(local[column].to_numpy()).astype(np.float32) if count else np.zeros((0, width), np.float32)
    )
    return item_ids, matrix


def broadcast_top_k(
    spark: SparkSession,
    requests: DataFrame,
    exclusions: DataFrame | None,
    item_ids: np.ndarray,
    matrix: np.ndarray,
    depth: int,
    source: str,
    queries_of: QueryBuilder,
) -> DataFrame:
    """Score each partition of `requests` against the shipped item matrix; exact top-`depth` per request,
    leaving out each request's `exclusions` (request_id, item_id), if any."""
    # Shipped as fixed-width text, so no object array is pickled; read back as the object ids sorted above.
    shipped = ship_arrays(spark, source, item_ids=item_ids.astype(str), matrix=matrix)
    chunk = max(1, SCORE_CELLS_PER_CHUNK // max(1, len(item_ids)))

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        arrays = load_shipped_arrays(shipped)
        ids, vectors = arrays["item_ids"].astype(object), arrays["matrix"]
        for batch in batches:
            for start in range(0, len(batch), chunk):
                part = batch.iloc[start : start + chunk]
                queries = queries_of(part, ids, vectors)
                yield rank_against(
                    part["request_id"].tolist(), queries, part["exclude"].tolist(), ids, vectors, depth
                )

    if exclusions is None:
        with_exclusions = requests.withColumn("exclude", F.lit(None).cast("array<string>"))
    else:
        excluded = exclusions.groupBy("request_id").agg(
            F.array_sort(F.collect_list("item_id")).alias("exclude")
        )
        with_exclusions = requests.join(excluded, "request_id", "left")
    return tag_source(with_exclusions.mapInPandas(score, RETRIEVED_SCHEMA), source)
