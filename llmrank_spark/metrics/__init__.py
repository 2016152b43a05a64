"""Ranking metrics over pandas lists, pure functions: relevance, exposure, diversity, groups."""

from llmrank_spark.metrics.diversity import (
    Embeddings,
    intra_list_diversity_by_category,
    intra_list_diversity_by_embedding,
    unit_vectors,
)
from llmrank_spark.metrics.exposure import (
    catalogue_coverage,
    exposure_shares,
    gini,
    popularity_buckets,
    share_held_above,
    shares_of,
)
from llmrank_spark.metrics.groups import age_band_labels, age_bands, group_quality, user_groups
from llmrank_spark.metrics.lists import ITEM, RANK, REQUEST
from llmrank_spark.metrics.relevance import average_precision, mrr, ndcg_at_k, recall_at_k, relative_change
from llmrank_spark.metrics.summary import METRIC_COLUMNS, QUALITY_METRICS, evaluate_lists

__all__ = [
    "ITEM",
    "METRIC_COLUMNS",
    "QUALITY_METRICS",
    "RANK",
    "REQUEST",
    "Embeddings",
    "age_band_labels",
    "age_bands",
    "average_precision",
    "catalogue_coverage",
    "evaluate_lists",
    "exposure_shares",
    "gini",
    "group_quality",
    "intra_list_diversity_by_category",
    "intra_list_diversity_by_embedding",
    "mrr",
    "ndcg_at_k",
    "popularity_buckets",
    "recall_at_k",
    "relative_change",
    "share_held_above",
    "shares_of",
    "unit_vectors",
    "user_groups",
]
