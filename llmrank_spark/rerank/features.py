"""Ranking features of every (request, candidate) pair, whatever proposed the candidate, by Spark joins.

The learned fusion (`fusion.py`) ranks on these and the BERT score. They are computed by one function,
`ranking_features_from`, in training (on the inputs its candidates were retrieved from: the history
before the split) and in the rerank step (`ranking_features`: the history up to the run date), so a
model is served exactly the features it learned from. Every feature
is defined for every pair: a retriever that did not propose an item leaves its rank null (the learner's
"missing"), and every other feature falls back to a stated value when its input is absent (no events,
no ALS factors for a new item, no price, no brand). docs/tables.md lists them beside the candidates
contract.

What each measures is in `MEANINGS` (rendered into docs/tables.md beside the candidates contract), as
of the end of `as_of`, from the events the retrievers read (`prepare_inputs`: catalogue items, known
event types, weighted by type and recency).

Query requests get the item-only features (popularity, category share, freshness, ranks); the
user features are 0 for them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import RETRIEVERS, CandidatesConfig
from llmrank_spark.lakehouse import checkpointed
from llmrank_spark.retrieval import (
    SECONDS_PER_DAY,
    RetrievalInputs,
    covisit_scores,
    item_popularity,
    prepare_inputs,
    recency_profiles,
)

# Freshness of an item no event ever touched: older than any seasonal cycle the data could show.
STALE_DAYS = 365.0
# What each feature measures. Defined for every pair, with the fallback stated, except the ranks.
MEANINGS = {
    "als_score": "implicit ALS preference: user factors · item factors (0 if either has none)",
    "covisit_score": "co-visitation with the user's `recent_items` newest items (0 if none)",
    "text_similarity": "cosine of the item's MiniLM text vector and the user's profile, the "
    "recency-weighted mean of their recent items' vectors (0 without history)",
    "popularity": "log(1 + recency-decayed event weight of the item over all users)",
    "category_share": "the item's share of its category's decayed popularity",
    "category_affinity": "share of the user's decayed history in the item's category (0 if none)",
    "brand_affinity": "share of the user's decayed history in the item's brand (0 if none or no brand)",
    "price_ratio": "log(item price / median price of the user's history items) (0 if either is unknown)",
    "days_since_item_event": f"days from the item's newest event to the data's newest ({STALE_DAYS:.0f} if "
    "it has none): freshness",
    "blend_rank": "the item's place in the blended candidate list (null if it is not in it)",
    **{
        f"rank_{source}": f"the item's place in the {source} retriever's list (null if not proposed)"
        for source in RETRIEVERS
    },
}
RETRIEVER_RANKS = tuple(f"rank_{source}" for source in RETRIEVERS)
# Null where the candidate was not proposed by that list: the learner's "missing", not a number.
RANK_FEATURES = ("blend_rank", *RETRIEVER_RANKS)
DENSE_FEATURES = tuple(name for name in MEANINGS if name not in RANK_FEATURES)
FEATURES = (*DENSE_FEATURES, *RANK_FEATURES)
PROFILE_SCHEMA = "user_id string, profile array<float>"


def feature_matrix(frame: pd.DataFrame, names: tuple[str, ...] | list[str]) -> np.ndarray:
    """(rows, features) float64 of `names`, a null as NaN (LightGBM's missing value)."""
    return frame[list(names)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)


def _dot(left: str, right: str):
    """The dot product of two equal-length array columns, null when either is null."""
    products = F.zip_with(F.col(left), F.col(right), lambda x, y: x * y)
    return F.aggregate(products, F.lit(0.0).cast("double"), lambda total, x: total + x)


def _profiles(inputs: RetrievalInputs, embeddings: DataFrame) -> DataFrame:
    """(user_id, profile): the unit-length recency-weighted mean of the user's recent items' text vectors,
    the semantic retriever's user profile (`recency_profiles`)."""

    def profile(history: pd.DataFrame) -> pd.DataFrame:
        history = history.sort_values("item_id", kind="mergesort")
        ids = history["item_id"].to_numpy(dtype=object)
        matrix = np.stack(history["embedding"].to_numpy()).astype(np.float32)
        entries = [{"item_id": i, "weight": w} for i, w in zip(ids, history["weight"], strict=True)]
        vector = recency_profiles([entries], ids, matrix)[0]
        return pd.DataFrame({"user_id": [history["user_id"].iloc[0]], "profile": [vector]})

    recent = inputs.history.where(F.col("position") <= inputs.cfg.recent_items)
    return (
        recent.select("user_id", "item_id", "weight")
        .join(embeddings, "item_id")
        .groupBy("user_id")
        .applyInPandas(profile, PROFILE_SCHEMA)
    )


def _affinity(inputs: RetrievalInputs, column: str) -> DataFrame:
    """(user_id, <column>, <column>_affinity): each user's share of decayed history weight by `column`."""
    per_value = (
        inputs.history.join(inputs.items.select("item_id", column), "item_id")
        .where(F.col(column).isNotNull())
        .groupBy("user_id", column)
        .agg(F.sum("weight").alias("weight"))
    )
    total = per_value.groupBy("user_id").agg(F.sum("weight").alias("total"))
    return per_value.join(total, "user_id").select(
        "user_id", column, (F.col("weight") / F.col("total")).alias(f"{column}_affinity")
    )


def _usual_price(inputs: RetrievalInputs) -> DataFrame:
    """(user_id, usual_price): the median price of the items in the user's history."""
    priced = inputs.history.join(inputs.items.select("item_id", "price"), "item_id").where(F.col("price") > 0)
    return priced.groupBy("user_id").agg(F.percentile_approx("price", 0.5).alias("usual_price"))


def ranking_features_from(pairs: DataFrame, inputs: RetrievalInputs) -> DataFrame:
    """`pairs` (request_type, request_id, item_id, optional retrieval_rank and source_ranks) with every
    column of `FEATURES`, computed from prepared retrieval inputs (`prepare_inputs`).

    The events, the histories and the pairs are computed once and their query plans cut
    (`checkpointed`): every feature below is a branch over them, and with their full plans under each
    branch a task of the joined plan grows too deep for the executor to deserialize.
    """
    inputs = replace(inputs, events=checkpointed(inputs.events), history=checkpointed(inputs.history))
    pairs = checkpointed(pairs)
    items = inputs.items
    user = F.when(F.col("request_type") == "user", F.col("request_id"))
    frame = pairs.withColumn("_user", user)
    # Candidates from outside the blender (an upstream list, a protocol's negatives) have no ranks.
    for name, kind in (("retrieval_rank", "int"), ("source_ranks", "map<string,int>")):
        if name not in pairs.columns:
            frame = frame.withColumn(name, F.lit(None).cast(kind))

    popularity = item_popularity(inputs)
    in_category = popularity.groupBy("category").agg(F.sum("popularity").alias("category_total"))
    freshness = inputs.events.groupBy("item_id").agg((F.min("age") / SECONDS_PER_DAY).alias("fresh"))
    described = items.select(
        "item_id",
        F.col("brand") if "brand" in items.columns else F.lit(None).cast("string").alias("brand"),
        F.col("price").cast("double")
        if "price" in items.columns
        else F.lit(None).cast("double").alias("price"),
    )
    item_side = (
        popularity.join(in_category, "category", "left")
        .join(freshness, "item_id", "left")
        .join(described, "item_id", "left")
        .select(
            "item_id",
            "category",
            F.log1p("popularity").alias("popularity"),
            F.when(F.col("category_total") > 0, F.col("popularity") / F.col("category_total"))
            .otherwise(0.0)
            .alias("category_share"),
            F.coalesce("fresh", F.lit(STALE_DAYS)).alias("days_since_item_event"),
            "brand",
            "price",
        )
    )
    frame = frame.join(item_side, "item_id", "left")
    frame = frame.join(
        _affinity(inputs, "category").withColumnRenamed("user_id", "_user"), ["_user", "category"], "left"
    )
    if "brand" in items.columns:
        frame = frame.join(
            _affinity(inputs, "brand").withColumnRenamed("user_id", "_user"), ["_user", "brand"], "left"
        )
    else:
        frame = frame.withColumn("brand_affinity", F.lit(None).cast("double"))
    if "price" in items.columns:
        frame = frame.join(_usual_price(inputs).withColumnRenamed("user_id", "_user"), "_user", "left")
        ratio = F.when(
            (F.col("price") > 0) & (F.col("usual_price") > 0), F.log(F.col("price") / F.col("usual_price"))
        )
    else:
        ratio = F.lit(None).cast("double")
    frame = frame.withColumn("price_ratio", ratio)

    covisit = covisit_scores(inputs).select(
        F.col("request_id").alias("_user"), "item_id", F.col("source_score").alias("covisit_score")
    )
    frame = frame.join(covisit, ["_user", "item_id"], "left")

    factors = inputs.als
    if factors is not None:
        frame = (
            frame.join(factors.users.toDF("_user", "_user_factors"), "_user", "left")
            .join(factors.items.toDF("item_id", "_item_factors"), "item_id", "left")
            .withColumn("als_score", _dot("_user_factors", "_item_factors"))
        )
    else:
        frame = frame.withColumn("als_score", F.lit(None).cast("double"))

    embeddings = inputs.item_vectors
    frame = (
        frame.join(_profiles(inputs, embeddings).toDF("_user", "_profile"), "_user", "left")
        .join(embeddings.toDF("item_id", "_embedding"), "item_id", "left")
        .withColumn("text_similarity", _dot("_profile", "_embedding"))
    )

    dense = {name: F.coalesce(F.col(name).cast("double"), F.lit(0.0)) for name in DENSE_FEATURES}
    ranks = {
        name: F.col("source_ranks")[source].cast("double")
        for name, source in zip(RETRIEVER_RANKS, RETRIEVERS, strict=True)
    }
    return frame.select(
        *pairs.columns,
        *[expression.alias(name) for name, expression in dense.items()],
        F.col("retrieval_rank").cast("double").alias("blend_rank"),
        *[expression.alias(name) for name, expression in ranks.items()],
    )


def ranking_features(
    spark: SparkSession,
    pairs: DataFrame,
    items: DataFrame,
    interactions: DataFrame,
    users: DataFrame | None,
    cfg: CandidatesConfig,
    as_of: dt.date,
    item_vectors: DataFrame | None = None,
) -> DataFrame:
    """`pairs` with every column of `FEATURES` from the events up to the end of `as_of`; `item_vectors`
    (item_id, embedding) are the catalogue's stored text vectors, if a step read them."""
    inputs = prepare_inputs(spark, items, interactions, users, cfg, as_of, item_vectors)
    return ranking_features_from(pairs, inputs)
