"""Run-level exposure of every order, summed in Spark: catalogue coverage, and the position-discounted
exposure each provider and each popularity bucket gets; one row per (order, k, group) reaches the driver.
The shares and their Gini are then the pure `metrics` functions (`shares_of`, `gini`)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from llmrank_spark.metrics import ITEM, RANK


def _top_k_rows(lists: DataFrame, ks: Sequence[int]) -> DataFrame:
    """Each list row once per k whose top k holds it, with that k."""
    cuts = F.array(*(F.lit(k) for k in sorted(set(ks))))
    return lists.withColumn("k", F.explode(F.filter(cuts, lambda k: F.col(RANK) <= k)))


def _discount() -> Column:
    """1 / log2(1 + rank), as `metrics.position_discount`."""
    return F.lit(1.0) / F.log2(F.col(RANK) + F.lit(1.0))


def exposure_totals(lists: DataFrame, item_group: DataFrame, ks: Sequence[int]) -> pd.DataFrame:
    """(step, k, group, exposure): the discounted exposure the items of each group (item_group: item_id,
    group; null: none) get in each order's top k."""
    grouped = item_group.where(F.col("group").isNotNull()).select(ITEM, "group")
    return (
        _top_k_rows(lists, ks)
        .join(grouped, ITEM)
        .groupBy("step", "k", "group")
        .agg(F.sum(_discount()).alias("exposure"))
        .toPandas()
    )


def shown_items(lists: DataFrame, catalogue: DataFrame, ks: Sequence[int]) -> pd.DataFrame:
    """(step, k, shown): how many catalogue items (catalogue: item_id) each order shows in some top k."""
    return (
        _top_k_rows(lists, ks)
        .join(catalogue.select(ITEM), ITEM, "left_semi")
        .groupBy("step", "k")
        .agg(F.countDistinct(ITEM).alias("shown"))
        .toPandas()
    )
