"""The popularity retrievers: recency-decayed global popularity and popularity in favourite categories."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from llmrank_spark.retrieval.inputs import RetrievalInputs, decay
from llmrank_spark.retrieval.retrieved import top_per_request

ALL_ITEMS = "*"  # the one popularity group of global popularity


def item_popularity(inputs: RetrievalInputs) -> DataFrame:
    """(item_id, category, popularity) for the whole catalogue: sum of event weight x recency, 0 if none."""
    decayed = F.col("weight") * decay(F.col("age"), inputs.cfg.popularity_half_life_days)
    scores = inputs.events.groupBy("item_id").agg(F.sum(decayed).alias("popularity"))
    return (
        inputs.items.select("item_id", "category").join(scores, "item_id", "left").fillna(0.0, ["popularity"])
    )


def popular_in_groups(
    inputs: RetrievalInputs, requests: DataFrame, ranking: DataFrame, depth: int
) -> DataFrame:
    """The `depth` most popular items of each (request_id, group) the user may be shown.

    Each request takes the group's first depth + (its excluded items in the group) ranks, an equi-join on
    rank, so a user reaches as deep as their exclusions need without a range join over the catalogue.
    """
    excluded = (
        inputs.exclusions.join(ranking.select("item_id", "group"), "item_id")
        .groupBy("request_id", "group")
        .agg(F.count("*").alias("excluded"))
    )
    reach = F.lit(depth) + F.coalesce(F.col("excluded"), F.lit(0))
    slots = requests.join(excluded, ["request_id", "group"], "left").select(
        "request_id",
        "group",
        "affinity",
        F.explode(F.sequence(F.lit(1), reach.cast("int"))).alias("popularity_rank"),
    )
    return slots.join(F.broadcast(ranking), ["group", "popularity_rank"])


def ranked_within(popularity: DataFrame, group: str) -> DataFrame:
    """Popularity rank (1 = most popular, ties by item_id) and total popularity within each `group`."""
    most_popular = Window.partitionBy("group").orderBy(F.col("popularity").desc(), F.col("item_id"))
    return (
        popularity.withColumn("group", F.col(group))
        .where(F.col("group").isNotNull())
        .withColumn("popularity_rank", F.row_number().over(most_popular))
        .withColumn("group_popularity", F.sum("popularity").over(Window.partitionBy("group")))
        .select("group", "item_id", "popularity", "popularity_rank", "group_popularity")
    )


def most_popular(inputs: RetrievalInputs, popularity: DataFrame, depth: int) -> DataFrame:
    """The catalogue's most popular items ranked (1 = most popular, ties by item_id) as the one group
    ALL_ITEMS, as deep as any request can reach: `depth` plus the most items any request excludes.

    A rank over the whole catalogue is a window without a partition, which Spark sorts in one task over
    every item. Only the head is ever read, so Spark's distributed top-k (each partition's best, merged)
    picks it, and its rows (not the catalogue's) are numbered on the driver.
    """
    excluded = inputs.exclusions.groupBy("request_id").count().agg(F.max("count")).collect()[0][0]
    reach = depth + int(excluded or 0)
    head = popularity.orderBy(F.col("popularity").desc(), F.col("item_id")).limit(reach)
    top: pd.DataFrame = head.select("item_id", "popularity").toPandas()
    top = top.assign(group=ALL_ITEMS, popularity_rank=np.arange(1, len(top) + 1, dtype=np.int32))
    return inputs.spark.createDataFrame(
        top[["group", "item_id", "popularity", "popularity_rank"]],
        "group string, item_id string, popularity double, popularity_rank int",
    )


def popularity_candidates(inputs: RetrievalInputs, depth: int) -> DataFrame:
    """Recency-decayed global popularity for every active user (cold-start users included), deep enough to
    give each exactly `depth` items whenever the catalogue holds that many they may be shown."""
    requests = inputs.users.select(
        "request_id", F.lit(ALL_ITEMS).alias("group"), F.lit(1.0).alias("affinity")
    )
    ranking = most_popular(inputs, item_popularity(inputs), depth)
    popular = popular_in_groups(inputs, requests, ranking, depth).withColumn(
        "source_score", F.col("popularity")
    )
    return top_per_request(popular, inputs, "popularity", depth)


def category_popularity_candidates(inputs: RetrievalInputs, depth: int) -> DataFrame:
    """Popular items of the user's `top_categories` categories, scored share(category) x share(item in it)."""
    cfg = inputs.cfg
    per_category = (
        inputs.history.join(inputs.items.select("item_id", "category"), "item_id")
        .where(F.col("category").isNotNull())
        .groupBy(F.col("user_id").alias("request_id"), F.col("category").alias("group"))
        .agg(F.sum("weight").alias("weight"))
    )
    favourite = Window.partitionBy("request_id").orderBy(F.col("weight").desc(), F.col("group"))
    requests = (
        per_category.withColumn(
            "affinity", F.col("weight") / F.sum("weight").over(Window.partitionBy("request_id"))
        )
        .withColumn("category_rank", F.row_number().over(favourite))
        .where(F.col("category_rank") <= cfg.top_categories)
        .select("request_id", "group", "affinity")
    )
    ranking = ranked_within(item_popularity(inputs), "category")
    share = F.when(F.col("group_popularity") > 0, F.col("popularity") / F.col("group_popularity")).otherwise(
        0.0
    )
    popular = popular_in_groups(inputs, requests, ranking, depth).withColumn(
        "source_score", F.col("affinity") * share
    )
    return top_per_request(popular, inputs, "category_popularity", depth)
