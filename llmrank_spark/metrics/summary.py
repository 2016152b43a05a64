"""Every metric of a run's lists, as (metric, slice, value) rows."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import pandas as pd

from llmrank_spark.metrics.diversity import (
    Embeddings,
    intra_list_diversity_by_category,
    intra_list_diversity_by_embedding,
)
from llmrank_spark.metrics.exposure import (
    HEAD,
    MID,
    TAIL,
    catalogue_coverage,
    exposure_shares,
    gini,
    popularity_buckets,
)
from llmrank_spark.metrics.groups import group_quality
from llmrank_spark.metrics.lists import ITEM, check_lists, require_columns
from llmrank_spark.metrics.relevance import average_precision, mrr, ndcg_at_k, recall_at_k

METRIC_COLUMNS = ["metric", "slice", "value"]


def evaluate_lists(
    ranked: pd.DataFrame,
    items: pd.DataFrame,
    *,
    ks: Sequence[int] = (10,),
    labels: pd.DataFrame | None = None,
    item_popularity: pd.Series | None = None,
    popularity_split: tuple[float, float] = (0.2, 0.2),
    long_tail_providers: Collection[str] | None = None,
    embeddings: Embeddings | None = None,
    request_groups: Mapping[str, pd.Series] | None = None,
) -> pd.DataFrame:
    """The ``metrics`` rows (metric, slice, value) of one set of ranked lists; step and date are added later.

    `items` is the items table (item_id, category, brand: the provider). Each optional input switches
    on the metrics that need it: `labels` the quality metrics (also per user group with
    `request_groups`, attribute -> (request_id -> group)), `item_popularity` (item_id -> interactions)
    exposure by popularity bucket, `long_tail_providers` the long-tail exposure share, `embeddings`
    the embedding diversity. Metrics that cannot be measured (no evaluated request) are left out.
    """
    check_lists(ranked)
    require_columns(items, [ITEM, "category"], "items")
    if items[ITEM].duplicated().any():
        twice = items.loc[items[ITEM].duplicated(), ITEM].iloc[0]
        raise ValueError(f"items: item_id '{twice}' appears more than once; deduplicate the catalogue")
    catalogue = items.set_index(ITEM)
    providers = catalogue["brand"].dropna() if "brand" in catalogue else pd.Series(dtype=object)
    buckets = (
        None
        if item_popularity is None
        else popularity_buckets(
            item_popularity.reindex(catalogue.index.union(item_popularity.index), fill_value=0),
            *popularity_split,
        )
    )
    rows: list[tuple[str, str, float]] = []
    for k in ks:
        if labels is not None:
            rows += _quality_rows(ranked, labels, k, request_groups or {})
        rows.append((f"coverage@{k}", "all", catalogue_coverage(ranked, catalogue.index, k)))
        if len(providers):
            shares = exposure_shares(ranked, providers, k, groups=providers.unique())
            rows += [(f"exposure@{k}", f"provider={p}", s) for p, s in shares.items()]
            rows.append((f"provider_gini@{k}", "all", gini(shares)))
            if long_tail_providers is not None:
                long_tail = shares[shares.index.isin(list(long_tail_providers))].sum()
                rows.append((f"exposure@{k}", "provider_group=long_tail", long_tail))
        if buckets is not None:
            shares = exposure_shares(ranked, buckets, k, groups=[HEAD, MID, TAIL])
            rows += [(f"exposure@{k}", f"popularity={b}", s) for b, s in shares.items()]
        by_category = intra_list_diversity_by_category(ranked, catalogue["category"], k)
        rows.append((f"ild_category@{k}", "all", by_category.mean()))
        if embeddings is not None:
            by_embedding = intra_list_diversity_by_embedding(ranked, embeddings, k)
            rows.append((f"ild_embedding@{k}", "all", by_embedding.mean()))
    metrics = pd.DataFrame(rows, columns=METRIC_COLUMNS).astype({"value": float})
    return metrics.dropna(subset=["value"]).reset_index(drop=True)


# The per-request relevance metrics every evaluation reports at each k, each as `<name>@<k>` rows overall
# and per request group. Adding one: its function in a metrics file and one line here.
QUALITY_METRICS: tuple[Callable[[pd.DataFrame, pd.DataFrame, int], pd.Series], ...] = (
    ndcg_at_k,
    recall_at_k,
    average_precision,
    mrr,
)


def _quality_rows(
    ranked: pd.DataFrame, labels: pd.DataFrame, k: int, request_groups: Mapping[str, pd.Series]
) -> list[tuple[str, str, float]]:
    quality = [metric(ranked, labels, k) for metric in QUALITY_METRICS]
    rows = [(f"evaluated_requests@{k}", "all", float(len(quality[0])))]
    for per_request in quality:
        rows.append((per_request.name, "all", per_request.mean()))
        for attribute, groups in request_groups.items():
            means, gap = group_quality(per_request, groups)
            rows += [(per_request.name, f"{attribute}={g}", v) for g, v in means.items()]
            rows.append((f"{per_request.name}_gap", attribute, gap))
    return rows
