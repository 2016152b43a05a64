"""The blender: one list per request from the retrievers' lists, by weighted reciprocal rank."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from llmrank_spark.config import CandidatesConfig

# ---- blender ------------------------------------------------------------------------------------------


def _per_source_map(values: Mapping[str, float], default: float):
    """A Spark map lookup of `values` by the row's source, `default` for a source not in it."""
    if not values:  # an empty map literal has no value type to look up
        return F.lit(default)
    lookup = F.create_map(*[F.lit(v) for pair in sorted(values.items()) for v in pair])
    return F.coalesce(lookup[F.col("source")], F.lit(default))


def blend(
    retrieved: Sequence[DataFrame],
    exclusions: DataFrame | None,
    cfg: CandidatesConfig,
    run_date: dt.date,
    request_type: str = "user",
) -> DataFrame:
    """The `candidates` rows of one request type: one list of `n_per_request` items per request from the
    retrievers' lists.

    An item proposed by several retrievers is one row keeping every source, rank and score. Items within
    some retriever's quota are sure of a place; the other places go by weighted reciprocal-rank fusion
    (sum of source weight / (fusion_k + rank)), which also orders the list; ties by item_id. Excluded
    items are dropped even if a retriever proposed them.
    """
    union = retrieved[0]
    for frame in retrieved[1:]:
        union = union.unionByName(frame)
    if exclusions is not None:
        union = union.join(exclusions, ["request_id", "item_id"], "left_anti")
    per_source = (
        union.groupBy("request_id", "item_id", "source")
        .agg(F.min("source_rank").alias("source_rank"), F.max("source_score").alias("source_score"))
        .withColumn("fused", _per_source_map(cfg.source_weights, 1.0) / (cfg.fusion_k + F.col("source_rank")))
        .withColumn("in_quota", F.col("source_rank") <= _per_source_map(cfg.quotas, 0))
    )
    entries = F.array_sort(F.collect_list(F.struct("source", "source_rank", "source_score")))
    merged = per_source.groupBy("request_id", "item_id").agg(
        F.sum("fused").alias("retrieval_score"),
        F.max("in_quota").alias("in_quota"),
        entries.alias("entries"),
    )
    by_request = Window.partitionBy("request_id")
    admission = by_request.orderBy(
        F.col("in_quota").desc(), F.col("retrieval_score").desc(), F.col("item_id")
    )
    list_order = by_request.orderBy(F.col("retrieval_score").desc(), F.col("item_id"))
    sources = F.transform("entries", lambda e: e["source"])
    return (
        merged.withColumn("admitted", F.row_number().over(admission))
        .where(F.col("admitted") <= cfg.n_per_request)
        .withColumn("retrieval_rank", F.row_number().over(list_order))
        .select(
            F.lit(run_date).alias("run_date"),
            "request_id",
            F.lit(request_type).alias("request_type"),
            "item_id",
            F.col("retrieval_rank").cast("int"),
            F.col("retrieval_score").cast("double"),
            sources.alias("sources"),
            F.map_from_arrays(sources, F.transform("entries", lambda e: e["source_rank"])).alias(
                "source_ranks"
            ),
            F.map_from_arrays(sources, F.transform("entries", lambda e: e["source_score"])).alias(
                "source_scores"
            ),
        )
    )
