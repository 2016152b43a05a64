"""The co-visitation retriever: items seen close in time to the shopper's recent items."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from llmrank_spark.retrieval.inputs import RetrievalInputs, decay
from llmrank_spark.retrieval.retrieved import top_per_request

# ---- retrievers ---------------------------------------------------------------------------------------


def covisit_neighbours(inputs: RetrievalInputs) -> DataFrame:
    """(item_id, neighbour_id, weight): each item's `covisit_neighbours` most strongly co-visited items.

    Two events of a user make a pair when they are at most `covisit_max_steps` events apart in the user's
    timeline and within `covisit_window_hours`: an equi-join on (user, step), so the self-join has
    events x 2 x covisit_max_steps rows however many events a user packs into one window. A pair weighs
    the neighbour event's type weight times its recency; a user counts once per pair (their strongest);
    the sum over users is cosine-normalised by the items' user counts, so hits are not simply popular.
    """
    cfg = inputs.cfg
    in_order = Window.partitionBy("user_id").orderBy("ts", "item_id", "event_type")
    timed = inputs.events.select(
        "user_id",
        "item_id",
        "ts",
        (F.col("weight") * decay(F.col("age"), cfg.covisit_half_life_days)).alias("pair_weight"),
        F.row_number().over(in_order).alias("step"),
    )
    anchors = timed.select("user_id", "step", "item_id", F.col("ts").alias("anchor_ts"))
    offsets = F.array(*[F.lit(o) for o in range(-cfg.covisit_max_steps, cfg.covisit_max_steps + 1) if o])
    neighbours = timed.select(
        "user_id",
        F.explode(F.transform(offsets, lambda offset: F.col("step") + offset)).alias("step"),
        F.col("item_id").alias("neighbour_id"),
        "ts",
        "pair_weight",
    )
    window_s = cfg.covisit_window_hours * 3600.0
    pairs = anchors.join(neighbours, ["user_id", "step"]).where(
        (F.col("item_id") != F.col("neighbour_id")) & (F.abs(F.col("ts") - F.col("anchor_ts")) <= window_s)
    )
    per_user = pairs.groupBy("user_id", "item_id", "neighbour_id").agg(F.max("pair_weight").alias("w"))
    users_of = inputs.events.groupBy("item_id").agg(F.countDistinct("user_id").alias("users"))
    strongest = Window.partitionBy("item_id").orderBy(F.col("weight").desc(), F.col("neighbour_id"))
    return (
        per_user.groupBy("item_id", "neighbour_id")
        .agg(F.sum("w").alias("together"))
        .join(users_of, "item_id")
        .join(users_of.toDF("neighbour_id", "neighbour_users"), "neighbour_id")
        .select(
            "item_id",
            "neighbour_id",
            (F.col("together") / F.sqrt(F.col("users") * F.col("neighbour_users"))).alias("weight"),
        )
        .withColumn("neighbour_rank", F.row_number().over(strongest))
        .where(F.col("neighbour_rank") <= cfg.covisit_neighbours)
        .drop("neighbour_rank")
    )


def covisit_scores(inputs: RetrievalInputs) -> DataFrame:
    """(request_id, item_id, source_score): every item co-visited with the user's `recent_items` newest
    items, summed over seeds by seed weight. The retriever keeps each user's best; the ranking features
    read the score of any candidate."""
    seeds = inputs.history.where(F.col("position") <= inputs.cfg.recent_items).select(
        F.col("user_id").alias("request_id"), "item_id", F.col("weight").alias("seed_weight")
    )
    return (
        seeds.join(covisit_neighbours(inputs), "item_id")
        .groupBy("request_id", F.col("neighbour_id").alias("item_id"))
        .agg(F.sum(F.col("seed_weight") * F.col("weight")).alias("source_score"))
    )


def covisit_candidates(inputs: RetrievalInputs, depth: int) -> DataFrame:
    """Items co-visited with the user's `recent_items` newest items, summed over seeds by seed weight."""
    return top_per_request(covisit_scores(inputs), inputs, "covisit", depth)
