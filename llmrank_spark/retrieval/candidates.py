"""First stage: N candidate items per active user from five retrievers and a blender, and per search
query from two (`queries.py`), entirely in Spark.

Every retriever is a Spark transformation returning (request_id, item_id, source, source_score,
source_rank); rank 1 is best and equal scores are ordered by item_id, never by input order.

- ``covisit``: item-to-item co-visitation. Two events of one user close in time and in their timeline
  make a pair, weighted by event type and recency (`covisit_half_life_days`); a user's `recent_items`
  newest items seed their list.
- ``als``: Spark MLlib implicit ALS on recency-weighted confidences (string ids mapped to dense ints in
  Spark with ``zipWithIndex`` over the sorted ids, so the mapping, and with the fixed seed the model,
  reproduce).
- ``semantic``: item text embeddings from the packaged all-MiniLM-L6-v2, computed in a pandas UDF (one
  model per Python worker); a user profile is the recency-weighted mean of their recent items' vectors.
- ``category_popularity``: the most popular items of the user's favourite categories.
- ``popularity``: recency-decayed global popularity. It reaches as deep into the catalogue as each
  user's exclusions require, so it alone can fill N, and it is how cold-start users get their list.

Nearest items for ``als`` and ``semantic`` are found without a cross join: the item matrix (sorted by
item_id) is collected to the driver and shipped to every executor, and each partition of users is
scored against it with one numpy matrix product per chunk of users and an exact top-k
(`rank_against`), already-purchased items masked out. That costs users x items x width multiply-adds
spread over the executors, and items x width x 4 bytes of memory per executor: 1.5 KiB per item for
the 384-wide text vectors, so the default cap `broadcast_max_items` = 500,000 items is 730 MiB. Past
that, block the catalogue (per category, or shard the matrix and merge the per-shard top-k) instead
of raising the cap.

The blender (`blend`) unions the lists, drops excluded items, keeps one row per item with every source's
tag, rank and score, gives each retriever's top `quotas` items a sure place and fills and orders each
list by weighted reciprocal-rank fusion (`source_weights`, `fusion_k`).

Excluded ("already purchased") items, with `exclude_purchased` on, are those the user has an event of a
type in `exclude_event_types` on: purchases, and ratings, since a rated film has been watched (so on
MovieLens every rated film is excluded). Views, clicks and carts never exclude: shoppers come back to
what they considered. No retriever proposes an excluded item, and the blender drops any that come in.

Only events before the end of `run_date` count, so re-running a date reproduces its lists, and recency
is measured from the newest such event, so a historic data set decays as a live one would.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import CandidatesConfig
from llmrank_spark.lakehouse import NO_CANDIDATES, as_rejects
from llmrank_spark.retrieval.blending import blend
from llmrank_spark.retrieval.inputs import RetrievalInputs, prepare_inputs
from llmrank_spark.retrieval.queries import query_lists
from llmrank_spark.retrieval.registry import retrieve_all
from llmrank_spark.retrieval.semantic import QueryEncoder


@dataclass(frozen=True)
class CandidateLists:
    """The candidates step's outputs. `rejects` reads `candidates` (users left without any): persist it
    before writing (`steps.materialised`) so it is computed once."""

    candidates: DataFrame  # the `candidates` table's rows
    rejects: DataFrame  # the `rejects` table's rows of the candidates step
    # What the retrievers read (with the fitted ALS factors): the ranking features of these lists are
    # computed from the same (`features.ranking_features_from`), not prepared and fitted a second time.
    inputs: RetrievalInputs


def build_candidates(
    spark: SparkSession,
    items: DataFrame,
    interactions: DataFrame,
    users: DataFrame | None,
    cfg: CandidatesConfig,
    run_date: dt.date,
    queries: DataFrame | None = None,
    item_vectors: DataFrame | None = None,
    query_encoder: QueryEncoder | None = None,
) -> CandidateLists:
    """The `candidates` table for run_date: exactly `n_per_request` items for every active user (those in
    `users` and in `interactions`) and, with `cfg.rank_queries`, for every row of `queries`, whenever the
    catalogue holds that many they may be shown; and the rejects: events left out of retrieval, queries
    that cannot be ranked, and requests left without any candidate. `item_vectors` (item_id, embedding)
    are the catalogue's stored text vectors (`item_vectors`); without them the catalogue is encoded.
    `query_encoder`: a fine-tuned query encoder for the query semantic retriever (with the catalogue's
    vectors under it, when kept); None: the packaged MiniLM."""
    inputs = prepare_inputs(spark, items, interactions, users, cfg, run_date, item_vectors)
    retrieved = retrieve_all(inputs, cfg.n_per_request)
    candidates = blend(list(retrieved.values()), inputs.exclusions, cfg, run_date)
    rejects = as_rejects(inputs.rejected, run_date, "candidates", "interactions").unionByName(
        as_rejects(
            _without_candidates(inputs.users, candidates, "user"),
            run_date,
            "candidates",
            F.col("input_table"),
        )
    )
    if queries is not None and cfg.rank_queries:
        query_candidates, rejected_queries = query_lists(inputs, queries, run_date, query_encoder)
        requested = queries.select(
            F.col("query_id").alias("request_id"), F.lit("queries").alias("input_table")
        )
        rankable = requested.join(rejected_queries, "request_id", "left_anti")
        candidates = candidates.unionByName(query_candidates)
        rejects = rejects.unionByName(
            as_rejects(rejected_queries, run_date, "candidates", "queries")
        ).unionByName(
            as_rejects(
                _without_candidates(rankable, query_candidates, "query"), run_date, "candidates", "queries"
            )
        )
    return CandidateLists(candidates, rejects, inputs)


def _without_candidates(requests: DataFrame, candidates: DataFrame, request_type: str) -> DataFrame:
    """Reject rows for the `requests` (request_id, input_table) that no list of `candidates` is for."""
    return requests.join(candidates.select("request_id").distinct(), "request_id", "left_anti").select(
        F.lit(request_type).alias("request_type"),
        "request_id",
        F.lit(None).cast("string").alias("item_id"),
        F.lit(NO_CANDIDATES).alias("reason"),
        F.lit("every retriever came back empty: all items excluded, or the catalogue is empty").alias(
            "detail"
        ),
        "input_table",
    )
