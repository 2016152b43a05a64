"""What every retriever is given: the run's events, items and exclusions, prepared once per run."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from llmrank_spark.config import CandidatesConfig
from llmrank_spark.events import end_of_day, events_until
from llmrank_spark.lakehouse import ITEM_NOT_IN_CATALOGUE, UNKNOWN_EVENT_TYPE

if TYPE_CHECKING:
    from llmrank_spark.retrieval.als import AlsFactors

SECONDS_PER_DAY = 86_400.0


# ---- shared inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalInputs:
    """What every retriever reads, prepared once from the input tables."""

    spark: SparkSession
    cfg: CandidatesConfig
    items: DataFrame  # the catalogue as given (item_id, category and the text fields)
    # user_id, item_id, event_type, ts (epoch s), weight (of the event type), age (s before the newest event)
    events: DataFrame
    # user_id, item_id, weight (sum of event weights decayed from the user's latest event), last_ts,
    # position (1 = the user's most recent item)
    history: DataFrame
    exclusions: DataFrame  # request_id, item_id: never proposed to that user
    users: DataFrame  # request_id of every active user, input_table: "interactions" if they have events
    has_events: bool
    rejected: DataFrame  # events left out: request_type, request_id, item_id, reason, detail
    # item_id, embedding: the catalogue's text vectors when a step read them from the item_embeddings
    # table (`item_vectors`); None encodes the catalogue here.
    stored_vectors: DataFrame | None = None

    @cached_property
    def item_vectors(self) -> DataFrame:
        """(item_id, embedding) of the catalogue: the stored vectors, or the catalogue encoded now."""
        from llmrank_spark.retrieval.semantic import item_embeddings

        return (
            self.stored_vectors if self.stored_vectors is not None else item_embeddings(self.items, self.cfg)
        )

    @cached_property
    def als(self) -> AlsFactors | None:
        """The implicit ALS model's factors, fitted once per run for the ALS retriever and the `als_score`
        ranking feature; None when there are no events."""
        from llmrank_spark.retrieval.als import als_factors

        return als_factors(self)

    @cached_property
    def item_text_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted item ids, their MiniLM text vectors) on the driver, collected once per run for the user
        and the query semantic retrievers."""
        from llmrank_spark.retrieval.vector_search import collect_matrix

        return collect_matrix(self.item_vectors, "embedding", self.cfg, "items")


def decay(age_seconds, half_life_days: float):
    return F.pow(F.lit(0.5), age_seconds / F.lit(half_life_days * SECONDS_PER_DAY))


def rejected_events(past: DataFrame, items: DataFrame, cfg: CandidatesConfig) -> DataFrame:
    """Events the retrievers cannot use, one row per (user, item, reason, detail) with the count in detail.

    Events on items missing from the catalogue can be neither embedded nor proposed; events of a type
    without a weight in `event_weights` cannot be weighed. Both are left out of retrieval and listed here.
    """
    missing_item = past.join(items.select("item_id"), "item_id", "left_anti").select(
        "user_id", "item_id", F.lit(ITEM_NOT_IN_CATALOGUE).alias("reason"), F.lit("").alias("what")
    )
    unknown_type = past.where(~F.col("event_type").isin(list(cfg.event_weights))).select(
        "user_id",
        "item_id",
        F.lit(UNKNOWN_EVENT_TYPE).alias("reason"),
        F.concat(F.lit("event_type '"), "event_type", F.lit("' not in candidates.event_weights; ")).alias(
            "what"
        ),
    )
    counted = missing_item.unionByName(unknown_type).groupBy("user_id", "item_id", "reason", "what").count()
    return counted.select(
        F.lit("user").alias("request_type"),
        F.col("user_id").alias("request_id"),
        "item_id",
        "reason",
        F.concat("what", F.col("count").cast("string"), F.lit(" events ignored")).alias("detail"),
    )


def prepare_inputs(
    spark: SparkSession,
    items: DataFrame,
    interactions: DataFrame,
    users: DataFrame | None,
    cfg: CandidatesConfig,
    run_date: dt.date,
    item_vectors: DataFrame | None = None,
) -> RetrievalInputs:
    """Events up to run_date's end on catalogue items, weighted by type and recency; histories; exclusions.

    Events on items missing from the catalogue, and of types without a weight, are left out of retrieval
    and listed in `rejected` (`rejected_events`).
    """
    past = events_until(interactions, run_date)
    weights = F.create_map(*[F.lit(v) for pair in sorted(cfg.event_weights.items()) for v in pair])
    catalogued = past.join(items.select("item_id"), "item_id", "left_semi").select(
        "user_id",
        "item_id",
        "event_type",
        (F.unix_micros("event_ts") / 1e6).alias("ts"),
        weights[F.col("event_type")].alias("weight"),
    )
    events = catalogued.where(F.col("weight").isNotNull())
    latest = events.agg(F.max("ts")).collect()[0][0]
    now = latest if latest is not None else end_of_day(run_date).replace(tzinfo=dt.UTC).timestamp()
    events = events.withColumn("age", F.lit(now) - F.col("ts"))

    user_latest = F.max("ts").over(Window.partitionBy("user_id"))
    newest_first = Window.partitionBy("user_id").orderBy(F.col("last_ts").desc(), F.col("item_id"))
    history = (
        events.withColumn(
            "decayed", F.col("weight") * decay(user_latest - F.col("ts"), cfg.history_half_life_days)
        )
        .groupBy("user_id", "item_id")
        .agg(F.sum("decayed").alias("weight"), F.max("ts").alias("last_ts"))
        .withColumn("position", F.row_number().over(newest_first))
    )

    excluding = cfg.exclude_event_types if cfg.exclude_purchased else []
    exclusions = (
        catalogued.where(F.col("event_type").isin(excluding))
        .select(F.col("user_id").alias("request_id"), "item_id")
        .distinct()
    )
    active = past.select("user_id", F.lit("interactions").alias("input_table"))
    if users is not None:
        active = active.unionByName(users.select("user_id", F.lit("users").alias("input_table")))
    return RetrievalInputs(
        spark=spark,
        cfg=cfg,
        items=items,
        events=events,
        history=history,
        exclusions=exclusions,
        # "interactions" sorts first: a user with events is traced to them rather than to the users table.
        users=active.groupBy(F.col("user_id").alias("request_id")).agg(
            F.min("input_table").alias("input_table")
        ),
        has_events=latest is not None,
        rejected=rejected_events(past, items, cfg),
        stored_vectors=item_vectors,
    )
