"""The ALS retriever: Spark MLlib implicit ALS on recency-weighted confidences."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from llmrank_spark.lakehouse import checkpointed
from llmrank_spark.retrieval.inputs import RetrievalInputs
from llmrank_spark.retrieval.retrieved import empty_retrieval
from llmrank_spark.retrieval.vector_search import (
    broadcast_top_k,
    collect_matrix,
    factor_queries,
)


def _dense_index(frame: DataFrame, column: str) -> DataFrame:
    """(column, index): 0..n-1 over the sorted distinct values; ALS needs int ids, and sorting fixes them.

    Spark has no DataFrame zipWithIndex (and Spark Connect no RDDs): a range-partitioned sort tags each row
    with its partition and its monotonically increasing id, which counts rows within a partition; only
    one row per partition (its size and first id) reaches the driver to turn those into global offsets.
    The tagged rows are checkpointed, so the sort is not sampled twice into other partition bounds.
    """
    tagged = checkpointed(
        frame.select(column)
        .distinct()
        .repartitionByRange(column)
        .sortWithinPartitions(column)
        .select(column, F.spark_partition_id().alias("part"), F.monotonically_increasing_id().alias("row_id"))
    )
    sizes = tagged.groupBy("part").agg(F.count("*").alias("rows"), F.min("row_id").alias("first_id"))
    parts: pd.DataFrame = sizes.orderBy("part").toPandas()
    shift = parts["rows"].cumsum() - parts["rows"] - parts["first_id"]
    shifts = tagged.sparkSession.createDataFrame(
        [(int(part), int(value)) for part, value in zip(parts["part"], shift, strict=True)],
        "part int, shift long",
    )
    return tagged.join(F.broadcast(shifts), "part").select(
        column, (F.col("row_id") + F.col("shift")).cast("int").alias("index")
    )


@dataclass(frozen=True)
class AlsFactors:
    """The fitted implicit ALS model's factors by id: the dot product of a user's and an item's is ALS's
    predicted preference."""

    users: DataFrame  # user_id, features
    items: DataFrame  # item_id, features


def als_factors(inputs: RetrievalInputs) -> AlsFactors | None:
    """Implicit-feedback ALS (MLlib) fitted on the history confidences; None when there are no events."""
    from pyspark.ml.recommendation import ALS

    if not inputs.has_events:
        return None
    cfg = inputs.cfg
    users = _dense_index(inputs.history, "user_id").withColumnRenamed("index", "user_index")
    items = _dense_index(inputs.history, "item_id").withColumnRenamed("index", "item_index")
    ratings = inputs.history.join(users, "user_id").join(items, "item_id")
    model = ALS(
        rank=cfg.als_rank,
        numUserBlocks=cfg.als_blocks,
        numItemBlocks=cfg.als_blocks,
        maxIter=cfg.als_max_iter,
        regParam=cfg.als_reg_param,
        alpha=cfg.als_alpha,
        implicitPrefs=True,
        seed=cfg.seed,
        userCol="user_index",
        itemCol="item_index",
        ratingCol="weight",
        coldStartStrategy="drop",
    ).fit(ratings)
    return AlsFactors(
        users=model.userFactors.join(users, F.col("id") == F.col("user_index")).select("user_id", "features"),
        items=model.itemFactors.join(items, F.col("id") == F.col("item_index")).select("item_id", "features"),
    )


def als_candidates(inputs: RetrievalInputs, depth: int) -> DataFrame:
    """Items ranked by implicit ALS's predicted preference (`als_factors`).

    MLlib's recommendForAllUsers cannot skip already-purchased items, so the item factors are shipped and
    scored with the exclusion mask instead (`rank_against`).
    """
    factors = inputs.als
    if factors is None:
        return empty_retrieval(inputs, "als")
    item_ids, matrix = collect_matrix(factors.items, "features", inputs.cfg, "ALS item factors")
    user_factors = factors.users.withColumnRenamed("user_id", "request_id")
    return broadcast_top_k(
        inputs.spark, user_factors, inputs.exclusions, item_ids, matrix, depth, "als", factor_queries
    )
