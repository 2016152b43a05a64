"""The attribute-order tables' shape, shared by both methods: keys, columns, ranking and segment labels.

The behaviour estimate (`behaviour.py`) and the occlusion explanation (`occlusion.py`) fill the same
two tables, `attribute_order` and `attribute_order_by_segment`; this module is what they agree on.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from llmrank_spark.text import MISSING_VALUE

REQUEST_KEYS = ["request_id", "request_type"]
ITEM_KEYS = [*REQUEST_KEYS, "item_id"]
SEGMENT_KEYS = ["segment_type", "segment", "category"]
ORDER_COLUMNS = {
    "request_id": "string",
    "request_type": "string",
    "item_id": "string",
    "attribute": "string",
    "value": "string",
    "importance": "double",
    "rank": "int",
}
SEGMENT_COLUMNS = {
    "segment_type": "string",
    "segment": "string",
    "category": "string",
    "attribute": "string",
    "mean_importance": "double",
    "support": "bigint",
    "rank": "int",
}


def ddl(columns: Mapping[str, str]) -> str:
    """A Spark DDL schema string from column name -> type."""
    return ", ".join(f"{name} {kind}" for name, kind in columns.items())


def rank_attributes(frame: pd.DataFrame, by: list[str], importance: str) -> pd.DataFrame:
    """`frame` with `rank` 1.. within each `by` group: highest importance first, ties by attribute name."""
    ordered = frame.sort_values(
        [*by, importance, "attribute"], ascending=[True] * len(by) + [False, True], kind="mergesort"
    )
    return ordered.assign(rank=ordered.groupby(by, sort=False).cumcount().astype("int32") + 1).reset_index(
        drop=True
    )


def segment_labels(requests: DataFrame, users: DataFrame | None, queries: DataFrame | None) -> DataFrame:
    """(request_id, request_type, segment_type, segment): a user's segment or a query's class.

    Requests whose segment or class is not recorded (or whose table is absent) get MISSING_VALUE.
    """
    labels = []
    if users is not None and "segment" in users.columns:
        labels.append(
            users.select(
                F.col("user_id").alias("request_id"),
                F.lit("user").alias("request_type"),
                F.col("segment"),
            )
        )
    if queries is not None and "query_class" in queries.columns:
        labels.append(
            queries.select(
                F.col("query_id").alias("request_id"),
                F.lit("query").alias("request_type"),
                F.col("query_class").alias("segment"),
            )
        )
    labelled = requests.select(*REQUEST_KEYS).distinct()
    if labels:
        known = labels[0] if len(labels) == 1 else labels[0].unionByName(labels[1])
        labelled = labelled.join(known, REQUEST_KEYS, "left")
    else:
        labelled = labelled.withColumn("segment", F.lit(None).cast("string"))
    return labelled.select(
        *REQUEST_KEYS,
        F.when(F.col("request_type") == "user", "user_segment")
        .otherwise("query_class")
        .alias("segment_type"),
        F.coalesce("segment", F.lit(MISSING_VALUE)).alias("segment"),
    )
