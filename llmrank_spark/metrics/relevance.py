"""Relevance metrics per request: NDCG, MRR, recall and average precision at k."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

from llmrank_spark.metrics.lists import RANK, RELEVANCE, REQUEST, judged_top_k, per_request, position_discount


def ndcg_at_k(ranked: pd.DataFrame, labels: pd.DataFrame, k: int) -> pd.Series:
    """NDCG@k per request: DCG of the list's top k over the DCG of the best possible top k of its labels."""
    judged, request_labels, evaluated = judged_top_k(ranked, labels, k)
    dcg = (judged[RELEVANCE] * position_discount(judged[RANK])).groupby(judged[REQUEST]).sum()
    ideal = request_labels.sort_values([REQUEST, RELEVANCE], ascending=[True, False])
    ideal_rank = ideal.groupby(REQUEST).cumcount() + 1
    keep = ideal_rank <= k
    ideal = ideal[keep]
    idcg = (ideal[RELEVANCE] * position_discount(ideal_rank[keep])).groupby(ideal[REQUEST]).sum()
    return (per_request(dcg, evaluated) / idcg.reindex(evaluated)).rename(f"ndcg@{k}")


def relative_change(
    baseline: pd.Series, other: pd.Series, *, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """(change, low, high): mean(other) / mean(baseline) - 1 over the requests both measured, and a
    bootstrap percentile interval for it (`scipy.stats.bootstrap`, seeded).

    Two orders of the same run judged on the same users differ by chance too: the interval says whether a
    change (say -1.5% NDCG) is more than which users happened to be evaluated. Requests are resampled
    with their pair of values, and the interval is that of the mean per-request difference over the
    baseline's mean, so a resample whose baseline is all zeros cannot make it undefined. NaNs when no
    request is in both or the baseline mean is 0.
    """
    # Sorted by request, so the seeded resamples do not depend on the order the requests arrived in.
    paired = pd.concat([baseline.rename("b"), other.rename("o")], axis=1, join="inner").dropna().sort_index()
    base = paired["b"].mean() if len(paired) else 0.0
    if base == 0:
        return (float("nan"),) * 3
    difference = (paired["o"] - paired["b"]).to_numpy(float)
    change = float(difference.mean() / base)
    if np.ptp(difference) == 0:  # every request moved alike: every resample gives the same change
        return change, change, change
    interval = bootstrap(
        (difference,),
        np.mean,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return change, float(interval.low / base), float(interval.high / base)


def mrr(ranked: pd.DataFrame, labels: pd.DataFrame, k: int | None = None) -> pd.Series:
    """Reciprocal rank of the first relevant item per request (0 when none is in the top k)."""
    judged, _, evaluated = judged_top_k(ranked, labels, k)
    first_hit = judged[judged[RELEVANCE] > 0].groupby(REQUEST)[RANK].min()
    return per_request(1.0 / first_hit, evaluated).rename("mrr" if k is None else f"mrr@{k}")


def recall_at_k(ranked: pd.DataFrame, labels: pd.DataFrame, k: int) -> pd.Series:
    """Share of each request's relevant items that made its top k."""
    judged, request_labels, evaluated = judged_top_k(ranked, labels, k)
    hits = judged[judged[RELEVANCE] > 0].groupby(REQUEST).size()
    relevant = request_labels[request_labels[RELEVANCE] > 0].groupby(REQUEST).size()
    return (per_request(hits, evaluated) / relevant.reindex(evaluated)).rename(f"recall@{k}")


def average_precision(ranked: pd.DataFrame, labels: pd.DataFrame, k: int | None = None) -> pd.Series:
    """AP per request: precision@rank summed over the relevant items in the top k, over min(#relevant, k).

    Dividing by min(#relevant, k) (not #relevant) lets a perfect top k score 1 when a request has more
    relevant items than fit; MAP is the mean over requests.
    """
    judged, request_labels, evaluated = judged_top_k(ranked, labels, k)
    hits = judged[judged[RELEVANCE] > 0].sort_values([REQUEST, RANK])
    precision_at_hit = (hits.groupby(REQUEST).cumcount() + 1) / hits[RANK]
    relevant = request_labels[request_labels[RELEVANCE] > 0].groupby(REQUEST).size()
    if k is not None:
        relevant = relevant.clip(upper=k)
    summed = precision_at_hit.groupby(hits[REQUEST]).sum()
    return (per_request(summed, evaluated) / relevant.reindex(evaluated)).rename(
        "map" if k is None else f"map@{k}"
    )
