"""The rerank stage: score every candidate with the broadcast BERT model, keep each request's top-K.

`rank_request` is the pure listwise step (one request's scored candidates -> its ranked top-K);
`rerank_candidates` is the Spark layer the pipeline calls: it builds the texts, scores the pairs in the
pandas UDF of `scoring` and applies `rank_request` per request with `applyInPandas`.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import RerankConfig
from llmrank_spark.model import FusionHead, ModelSpec, cross_encoder_spec, read_manifest, zero_shot_spec
from llmrank_spark.scoring import ScoringSettings, scoring_udf, ship_model
from llmrank_spark.tables import conform
from llmrank_spark.text import NEW_SHOPPER_CONTEXT, item_texts, user_contexts

# Best first; equal scores fall back to the retrieval order, then the item id: never to input order.
RANK_ORDER = (("score", False), ("retrieval_rank", True), ("item_id", True))
# What the listwise step returns per request; model_version and run_date are added once, in Spark.
RANKED_COLUMNS = {
    "request_id": "string",
    "request_type": "string",
    "item_id": "string",
    "rank": "int",
    "score": "double",
    "retrieval_rank": "int",
    "retrieval_score": "double",
    "sources": "array<string>",
}
RANKED_SCHEMA = ", ".join(f"{name} {kind}" for name, kind in RANKED_COLUMNS.items())


ITEM_EVENTS = "item_events"


def retrieval_features(rows: pd.DataFrame, features: list[str]) -> np.ndarray:
    """(rows, features) float32 for the fusion head. A retriever's feature is 1 / log2(1 + the item's rank
    in its list, from `source_ranks`), 0 when it did not propose the item; "item_events" is
    log(1 + the `item_events` column), the item's popularity."""
    matrix = np.zeros((len(rows), len(features)), dtype=np.float32)
    column = {name: j for j, name in enumerate(features)}
    if ITEM_EVENTS in column:
        matrix[:, column[ITEM_EVENTS]] = np.log1p(rows[ITEM_EVENTS].fillna(0).to_numpy(dtype=np.float64))
    for i, ranks in enumerate(rows["source_ranks"]):
        if ranks is None or (isinstance(ranks, float) and np.isnan(ranks)):
            continue
        # A map column arrives from Arrow as a dict or as (key, value) pairs, depending on the path.
        for source, rank in ranks.items() if isinstance(ranks, dict) else ranks:
            if source in column and rank is not None:
                matrix[i, column[source]] = 1.0 / np.log2(1.0 + rank)
    return matrix


def item_event_counts(interactions: DataFrame, as_of: dt.date) -> DataFrame:
    """(item_id, item_events): each item's events up to the end of `as_of`, the popularity feature."""
    past = interactions.where(F.col("event_ts") < F.lit(as_of + dt.timedelta(days=1)))
    return past.groupBy("item_id").agg(F.count("*").cast("double").alias(ITEM_EVENTS))


def fused_scores(logits: np.ndarray, features: np.ndarray, head: FusionHead | None) -> np.ndarray:
    """The served score: the BERT logit, or with a fusion head w_logit * logit + w . features + b."""
    if head is None:
        return np.asarray(logits, dtype=np.float64)
    weights = np.asarray(head.feature_weights, dtype=np.float64)
    return head.logit_weight * np.asarray(logits, dtype=np.float64) + features @ weights + head.bias


def rank_request(scored: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """One request's scored candidates in model order, ties broken deterministically, cut to `top_k`."""
    columns, ascending = zip(*RANK_ORDER, strict=True)
    ranked = scored.sort_values(list(columns), ascending=list(ascending), kind="mergesort").head(top_k)
    ranked = ranked.assign(rank=np.arange(1, len(ranked) + 1, dtype=np.int32))
    return ranked[list(RANKED_COLUMNS)].reset_index(drop=True)


def model_for(cfg: RerankConfig) -> tuple[ModelSpec, RerankConfig]:
    """The model `cfg.mode` asks for, and the text settings to serve it with.

    A fine-tuned artifact brings its own max length and templates (from reranker.json), so it is
    served on text built exactly as in training.
    """
    if cfg.mode == "zero_shot_bi_encoder":
        return zero_shot_spec(), cfg
    spec = cross_encoder_spec(cfg.model_path)
    manifest = read_manifest(spec.path)
    trained_text = {
        "max_length": manifest.max_length,
        "context_template": manifest.context_template,
        "item_template": manifest.item_template,
        "item_attributes": manifest.item_attributes,
    }
    return spec, cfg.model_copy(update=trained_text)


def request_contexts(
    candidates: DataFrame,
    interactions: DataFrame,
    items: DataFrame,
    cfg: RerankConfig,
    run_date: dt.date,
    queries: DataFrame | None,
) -> DataFrame:
    """(request_type, request_id, context_text): a user's recent history as of run_date, or a query's text."""
    users = candidates.where(F.col("request_type") == "user").select(F.col("request_id").alias("user_id"))
    history = interactions.join(users.distinct(), "user_id", "left_semi")
    contexts = user_contexts(history, items, cfg, as_of=run_date).withColumn("request_type", F.lit("user"))
    if queries is not None:
        contexts = contexts.unionByName(
            queries.select(
                F.col("query_id").alias("request_id"),
                F.col("query_text").alias("context_text"),
                F.lit("query").alias("request_type"),
            )
        )
    return contexts


def rerank_candidates(
    spark: SparkSession,
    candidates: DataFrame,
    items: DataFrame,
    interactions: DataFrame,
    cfg: RerankConfig,
    run_date: dt.date,
    queries: DataFrame | None = None,
) -> DataFrame:
    """The `ranked` table for one run: each request's top-K candidates by reranker score.

    `candidates` follows the `candidates` contract. Query requests need `queries` (their text is the
    context); users without history get `NEW_SHOPPER_CONTEXT`. Fails, naming what is missing and how to
    fix it, when cfg asks for a cross-encoder that does not exist: it never scores with an untrained head.
    """
    spec, cfg = model_for(cfg)
    head = read_manifest(spec.path).fusion_head if spec.kind == "cross_encoder" else None
    score = scoring_udf(ship_model(spark, spec), ScoringSettings.from_config(cfg))
    missing_query = F.raise_error(
        F.concat(
            F.lit("query request '"),
            F.col("request_id"),
            F.lit("' has no row in the queries table: pass queries to rerank_candidates"),
        )
    )
    missing_item = F.raise_error(
        F.concat(
            F.lit("candidate item '"),
            F.col("item_id"),
            F.lit("' is not in the items table; rebuild candidates against the current catalogue"),
        )
    )
    contexts = request_contexts(candidates, interactions, items, cfg, run_date, queries)
    pairs = (
        candidates.join(item_texts(items, cfg), "item_id", "left")
        .join(contexts, ["request_type", "request_id"], "left")
        .withColumn(
            "context_text",
            F.coalesce(
                "context_text",
                F.when(F.col("request_type") == "user", F.lit(NEW_SHOPPER_CONTEXT)).otherwise(missing_query),
            ),
        )
        .withColumn("item_text", F.coalesce("item_text", missing_item))
    )
    # Whole requests per partition in a fixed order: Arrow batches (and so the scores, bit for bit) are
    # the same on every rerun, and a batch repeats few contexts. The grouping below shuffles again, but
    # only ids and scores: the texts are dropped first.
    scored = (
        pairs.repartition("request_id", "request_type")
        .sortWithinPartitions("request_id", "request_type", "item_id")
        .withColumn("score", score("context_text", "item_text"))
    )

    def rank(scored_request: pd.DataFrame) -> pd.DataFrame:
        if head is not None:
            features = retrieval_features(scored_request, head.features)
            scored_request = scored_request.assign(
                score=fused_scores(scored_request["score"], features, head)
            )
        return rank_request(scored_request, cfg.top_k)

    kept = [name for name in RANKED_COLUMNS if name != "rank"] + (
        ["source_ranks", ITEM_EVENTS] if head else []
    )
    if head is not None:
        scored = scored.join(F.broadcast(item_event_counts(interactions, run_date)), "item_id", "left")
    ranked = scored.select(*kept).groupBy("request_id", "request_type").applyInPandas(rank, RANKED_SCHEMA)
    ranked = ranked.withColumn("model_version", F.lit(spec.version)).withColumn("run_date", F.lit(run_date))
    return conform(ranked, "ranked")
