"""First stage: N candidate items per active user from five retrievers and a blender, entirely in Spark.

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
item_id) is collected to the driver and broadcast, and each partition of users is scored against it
with one numpy matrix product per chunk of users and an exact top-k (`rank_against`), already-purchased
items masked out. That costs users x items x width multiply-adds spread over the executors, and
items x width x 4 bytes of memory per executor: 1.5 KiB per item for the 384-wide text vectors, so the
default cap `broadcast_max_items` = 500,000 items is 730 MiB. Past that, block the catalogue (per
category, or shard the matrix and merge the per-shard top-k) instead of raising the cap.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from llmrank_spark.config import CandidatesConfig
from llmrank_spark.rejects import ITEM_NOT_IN_CATALOGUE, NO_CANDIDATES, UNKNOWN_EVENT_TYPE, as_rejects
from llmrank_spark.text import ITEM_FIELDS, render_item_texts

SECONDS_PER_DAY = 86_400.0
RETRIEVED_SCHEMA = "request_id string, item_id string, source_score double, source_rank int"
EMBEDDING_SCHEMA = "item_id string, embedding array<float>"
# Scores of one chunk of users against the whole item matrix stay near this many float32 cells (256 MiB).
SCORE_CELLS_PER_CHUNK = 1 << 26
ENCODE_BATCH_SIZE = 64
ALL_ITEMS = "*"  # the one popularity group of global popularity

# ---- pure functions over numpy / pandas batches -------------------------------------------------------


def positions(item_ids: np.ndarray, wanted: Sequence[str]) -> np.ndarray:
    """Row of each wanted id in the sorted `item_ids`, -1 where it is absent."""
    wanted = np.asarray(list(wanted), dtype=object)
    if len(item_ids) == 0 or len(wanted) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    found = np.searchsorted(item_ids, wanted).clip(max=len(item_ids) - 1)
    return np.where(item_ids[found] == wanted, found, -1)


def top_k(scores: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the column indices of the k highest finite scores, best first, equal scores by lower index.

    np.partition finds each row's k-th best score in linear time; only the columns at or above it are sorted.
    """
    k = min(k, scores.shape[1])
    if k == 0:
        return [np.empty(0, dtype=np.int64) for _ in range(scores.shape[0])]
    kth_best = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    chosen = []
    for row, threshold in zip(scores, kth_best, strict=True):
        columns = (
            np.flatnonzero(row >= threshold) if np.isfinite(threshold) else np.flatnonzero(np.isfinite(row))
        )
        best = columns[np.lexsort((columns, -row[columns]))][:k]
        chosen.append(best)
    return chosen


_RETRIEVED_DTYPES = {
    "request_id": object,
    "item_id": object,
    "source_score": np.float64,
    "source_rank": np.int32,
}


def rank_against(
    request_ids: Sequence[str],
    queries: np.ndarray,
    excluded: Sequence[Sequence[str] | None],
    item_ids: np.ndarray,
    matrix: np.ndarray,
    k: int,
) -> pd.DataFrame:
    """Each request's k best items by dot product of its query with the item matrix, excluded items masked.

    `item_ids` is sorted and row i of `matrix` belongs to item_ids[i], so ties fall to the lower item_id.
    """
    scores = queries.astype(np.float32) @ matrix.T
    for row, items in enumerate(excluded):
        if items is not None and len(items):
            found = positions(item_ids, items)
            scores[row, found[found >= 0]] = -np.inf
    frames = []
    for request_id, row, best in zip(request_ids, scores, top_k(scores, k), strict=True):
        frames.append(
            pd.DataFrame(
                {
                    "request_id": request_id,
                    "item_id": item_ids[best],
                    "source_score": row[best].astype(np.float64),
                    "source_rank": np.arange(1, len(best) + 1, dtype=np.int32),
                }
            )
        )
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _RETRIEVED_DTYPES.items()})
    return pd.concat(frames, ignore_index=True)


def recency_profiles(histories: Sequence, item_ids: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Unit-length weighted mean of each user's history vectors; `histories` holds (item_id, weight) lists."""
    profiles = np.zeros((len(histories), matrix.shape[1]), dtype=np.float32)
    for row, history in enumerate(histories):
        ids = [entry["item_id"] for entry in history]
        weights = np.array([entry["weight"] for entry in history], dtype=np.float64)
        found = positions(item_ids, ids)
        known = found >= 0
        if known.any() and weights[known].sum() > 0:
            mean = weights[known] @ matrix[found[known]].astype(np.float64) / weights[known].sum()
            norm = np.linalg.norm(mean)
            profiles[row] = mean / norm if norm > 0 else mean
    return profiles


def factor_queries(batch: pd.DataFrame, item_ids: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """ALS user factors as queries: the dot product with item factors is ALS's predicted preference."""
    return np.stack(batch["features"].to_numpy()).astype(np.float32)


def profile_queries(batch: pd.DataFrame, item_ids: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Semantic queries: each user's recency-weighted profile of their history's text vectors."""
    return recency_profiles(batch["history"].tolist(), item_ids, matrix)


QueryBuilder = Callable[[pd.DataFrame, np.ndarray, np.ndarray], np.ndarray]


def embed_items(items: pd.DataFrame, template: str, attribute_limit: int, encoder) -> pd.DataFrame:
    """(item_id, unit-length text embedding) for a batch of catalogue rows."""
    texts = render_item_texts(items, template, attribute_limit).tolist()
    vectors = encoder.encode(
        texts, batch_size=ENCODE_BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True
    )
    return pd.DataFrame(
        {"item_id": items["item_id"].to_numpy(), "embedding": list(vectors.astype(np.float32))}
    )


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


def _end_of(run_date: dt.date) -> dt.date:
    return run_date + dt.timedelta(days=1)


def _decay(age_seconds, half_life_days: float):
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
) -> RetrievalInputs:
    """Events up to run_date's end on catalogue items, weighted by type and recency; histories; exclusions.

    Events on items missing from the catalogue, and of types without a weight, are left out of retrieval
    and listed in `rejected` (`rejected_events`).
    """
    past = interactions.where(F.col("event_ts") < F.lit(_end_of(run_date)))
    weights = F.create_map(*[F.lit(v) for pair in sorted(cfg.event_weights.items()) for v in pair])
    catalogued = past.join(items.select("item_id"), "item_id", "left_semi").select(
        "user_id",
        "item_id",
        "event_type",
        (F.unix_micros("event_ts") / 1e6).alias("ts"),
        weights[F.col("event_type")].alias("weight"),
    )
    events = catalogued.where(F.col("weight").isNotNull())
    latest = events.agg(F.max("ts")).first()[0]
    now = (
        latest
        if latest is not None
        else dt.datetime.combine(_end_of(run_date), dt.time(), dt.UTC).timestamp()
    )
    events = events.withColumn("age", F.lit(now) - F.col("ts"))

    user_latest = F.max("ts").over(Window.partitionBy("user_id"))
    newest_first = Window.partitionBy("user_id").orderBy(F.col("last_ts").desc(), F.col("item_id"))
    history = (
        events.withColumn(
            "decayed", F.col("weight") * _decay(user_latest - F.col("ts"), cfg.history_half_life_days)
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
    )


# ---- Spark helpers ------------------------------------------------------------------------------------


def _tagged(ranked: DataFrame, source: str) -> DataFrame:
    return ranked.select(
        "request_id",
        "item_id",
        F.lit(source).alias("source"),
        F.col("source_score").cast("double"),
        F.col("source_rank").cast("int"),
    )


def _top_per_request(scored: DataFrame, inputs: RetrievalInputs, source: str, depth: int) -> DataFrame:
    """The `depth` best (request_id, item_id, source_score) rows per request that the user may be shown."""
    best_first = Window.partitionBy("request_id").orderBy(F.col("source_score").desc(), F.col("item_id"))
    ranked = (
        scored.join(inputs.exclusions, ["request_id", "item_id"], "left_anti")
        .withColumn("source_rank", F.row_number().over(best_first))
        .where(F.col("source_rank") <= depth)
    )
    return _tagged(ranked, source)


def _empty(inputs: RetrievalInputs, source: str) -> DataFrame:
    return _tagged(inputs.spark.createDataFrame([], RETRIEVED_SCHEMA), source)


def _collect_matrix(vectors: DataFrame, column: str, cfg: CandidatesConfig, what: str) -> tuple:
    """(sorted item ids, float32 matrix) on the driver, refusing catalogues over `broadcast_max_items`."""
    count = vectors.count()
    if count > cfg.broadcast_max_items:
        raise ValueError(
            f"{what}: {count:,} item vectors exceed candidates.broadcast_max_items "
            f"({cfg.broadcast_max_items:,}), the most this job collects and broadcasts; raise it only if "
            f"every executor has room for the matrix, else block the catalogue by category"
        )
    local = vectors.select("item_id", column).toPandas().sort_values("item_id", kind="mergesort")
    item_ids = local["item_id"].to_numpy(dtype=object)
    width = len(local[column].iloc[0]) if count else 0
    matrix = (
        np.stack(local[column].to_numpy()).astype(np.float32) if count else np.zeros((0, width), np.float32)
    )
    return item_ids, matrix


def _broadcast_top_k(
    inputs: RetrievalInputs,
    requests: DataFrame,
    item_ids: np.ndarray,
    matrix: np.ndarray,
    depth: int,
    source: str,
    queries_of: QueryBuilder,
) -> DataFrame:
    """Score each partition of `requests` against the broadcast item matrix; exact top-`depth` per request."""
    shipped = inputs.spark.sparkContext.broadcast((item_ids, matrix))
    chunk = max(1, SCORE_CELLS_PER_CHUNK // max(1, len(item_ids)))

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        ids, vectors = shipped.value
        for batch in batches:
            for start in range(0, len(batch), chunk):
                part = batch.iloc[start : start + chunk]
                queries = queries_of(part, ids, vectors)
                yield rank_against(
                    part["request_id"].tolist(), queries, part["exclude"].tolist(), ids, vectors, depth
                )

    excluded = inputs.exclusions.groupBy("request_id").agg(
        F.array_sort(F.collect_list("item_id")).alias("exclude")
    )
    with_exclusions = requests.join(excluded, "request_id", "left")
    return _tagged(with_exclusions.mapInPandas(score, RETRIEVED_SCHEMA), source)


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
        (F.col("weight") * _decay(F.col("age"), cfg.covisit_half_life_days)).alias("pair_weight"),
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
    return _top_per_request(covisit_scores(inputs), inputs, "covisit", depth)


def _dense_index(frame: DataFrame, column: str) -> DataFrame:
    """(column, index): 0..n-1 over the sorted distinct values; ALS needs int ids, and sorting fixes them."""
    ordered = frame.select(column).distinct().orderBy(column)
    indexed = ordered.rdd.zipWithIndex().map(lambda pair: (pair[0][0], pair[1]))
    return indexed.toDF(f"{column} string, index long").withColumn("index", F.col("index").cast("int"))


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

    MLlib's recommendForAllUsers cannot skip already-purchased items, so the item factors are broadcast and
    scored with the exclusion mask instead (`rank_against`).
    """
    factors = als_factors(inputs)
    if factors is None:
        return _empty(inputs, "als")
    item_ids, matrix = _collect_matrix(factors.items, "features", inputs.cfg, "ALS item factors")
    user_factors = factors.users.withColumnRenamed("user_id", "request_id")
    return _broadcast_top_k(inputs, user_factors, item_ids, matrix, depth, "als", factor_queries)


def item_embeddings(items: DataFrame, cfg: CandidatesConfig) -> DataFrame:
    """(item_id, embedding): MiniLM text vectors of the catalogue, one encoder per Python worker."""
    template, attribute_limit = cfg.semantic_item_template, cfg.semantic_item_attributes

    def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from llmrank_spark.model import load_sentence_encoder
        from llmrank_spark.scoring import task_device

        encoder = load_sentence_encoder(str(task_device("auto")))  # cached: loaded once per worker
        for batch in batches:
            yield embed_items(batch, template, attribute_limit, encoder)

    columns = [c for c in (*ITEM_FIELDS, "attributes") if c in items.columns]
    return items.select(*columns).mapInPandas(encode, EMBEDDING_SCHEMA)


def semantic_candidates(inputs: RetrievalInputs, depth: int) -> DataFrame:
    """Items whose text is nearest (cosine) to the recency-weighted profile of the user's recent items."""
    if not inputs.has_events:
        return _empty(inputs, "semantic")
    item_ids, matrix = _collect_matrix(
        item_embeddings(inputs.items, inputs.cfg), "embedding", inputs.cfg, "items"
    )
    histories = (
        inputs.history.where(F.col("position") <= inputs.cfg.recent_items)
        .groupBy(F.col("user_id").alias("request_id"))
        .agg(F.array_sort(F.collect_list(F.struct("item_id", "weight"))).alias("history"))
    )
    return _broadcast_top_k(inputs, histories, item_ids, matrix, depth, "semantic", profile_queries)


def item_popularity(inputs: RetrievalInputs) -> DataFrame:
    """(item_id, category, popularity) for the whole catalogue: sum of event weight x recency, 0 if none."""
    decayed = F.col("weight") * _decay(F.col("age"), inputs.cfg.popularity_half_life_days)
    scores = inputs.events.groupBy("item_id").agg(F.sum(decayed).alias("popularity"))
    return (
        inputs.items.select("item_id", "category").join(scores, "item_id", "left").fillna(0.0, ["popularity"])
    )


def _popular_in_groups(
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


def _ranked_within(popularity: DataFrame, group: str) -> DataFrame:
    """Popularity rank (1 = most popular, ties by item_id) and total popularity within each `group`."""
    most_popular = Window.partitionBy("group").orderBy(F.col("popularity").desc(), F.col("item_id"))
    return (
        popularity.withColumn("group", F.col(group) if group != ALL_ITEMS else F.lit(ALL_ITEMS))
        .where(F.col("group").isNotNull())
        .withColumn("popularity_rank", F.row_number().over(most_popular))
        .withColumn("group_popularity", F.sum("popularity").over(Window.partitionBy("group")))
        .select("group", "item_id", "popularity", "popularity_rank", "group_popularity")
    )


def popularity_candidates(inputs: RetrievalInputs, depth: int) -> DataFrame:
    """Recency-decayed global popularity for every active user (cold-start users included), deep enough to
    give each exactly `depth` items whenever the catalogue holds that many they may be shown."""
    requests = inputs.users.select(
        "request_id", F.lit(ALL_ITEMS).alias("group"), F.lit(1.0).alias("affinity")
    )
    ranking = _ranked_within(item_popularity(inputs), ALL_ITEMS)
    popular = _popular_in_groups(inputs, requests, ranking, depth).withColumn(
        "source_score", F.col("popularity")
    )
    return _top_per_request(popular, inputs, "popularity", depth)


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
    ranking = _ranked_within(item_popularity(inputs), "category")
    share = F.when(F.col("group_popularity") > 0, F.col("popularity") / F.col("group_popularity")).otherwise(
        0.0
    )
    popular = _popular_in_groups(inputs, requests, ranking, depth).withColumn(
        "source_score", F.col("affinity") * share
    )
    return _top_per_request(popular, inputs, "category_popularity", depth)


RETRIEVER_FUNCTIONS: dict[str, Callable[[RetrievalInputs, int], DataFrame]] = {
    "covisit": covisit_candidates,
    "als": als_candidates,
    "semantic": semantic_candidates,
    "category_popularity": category_popularity_candidates,
    "popularity": popularity_candidates,
}


def retrieve_all(inputs: RetrievalInputs, depth: int) -> dict[str, DataFrame]:
    """Every retriever's list of up to `depth` items per user, by source name."""
    return {source: retrieve(inputs, depth) for source, retrieve in RETRIEVER_FUNCTIONS.items()}


# ---- blender ------------------------------------------------------------------------------------------


def _per_source_map(values: dict[str, float], default: float):
    """A Spark map lookup of `values` by the row's source, `default` for a source not in it."""
    if not values:  # an empty map literal has no value type to look up
        return F.lit(default)
    lookup = F.create_map(*[F.lit(v) for pair in sorted(values.items()) for v in pair])
    return F.coalesce(lookup[F.col("source")], F.lit(default))


def blend(
    retrieved: Sequence[DataFrame], exclusions: DataFrame, cfg: CandidatesConfig, run_date: dt.date
) -> DataFrame:
    """The `candidates` table: one list of `n_per_request` items per request from the retrievers' lists.

    An item proposed by several retrievers is one row keeping every source, rank and score. Items within
    some retriever's quota are sure of a place; the other places go by weighted reciprocal-rank fusion
    (sum of source weight / (fusion_k + rank)), which also orders the list; ties by item_id. Excluded
    items are dropped even if a retriever proposed them.
    """
    union = retrieved[0]
    for frame in retrieved[1:]:
        union = union.unionByName(frame)
    per_source = (
        union.join(exclusions, ["request_id", "item_id"], "left_anti")
        .groupBy("request_id", "item_id", "source")
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
            F.lit("user").alias("request_type"),
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


@dataclass(frozen=True)
class CandidateLists:
    """The candidates step's outputs. `rejects` reads `candidates` (users left without any): persist it
    before writing (`steps.materialised`) so it is computed once."""

    candidates: DataFrame  # the `candidates` table's rows
    rejects: DataFrame  # the `rejects` table's rows of the candidates step


def build_candidates(
    spark: SparkSession,
    items: DataFrame,
    interactions: DataFrame,
    users: DataFrame | None,
    cfg: CandidatesConfig,
    run_date: dt.date,
) -> CandidateLists:
    """The `candidates` table for run_date: exactly `n_per_request` items for every active user (those in
    `users` and in `interactions`) whenever the catalogue holds that many they may be shown; and the
    rejects: events left out of retrieval, and active users left without any candidate."""
    inputs = prepare_inputs(spark, items, interactions, users, cfg, run_date)
    retrieved = retrieve_all(inputs, cfg.n_per_request)
    candidates = blend(list(retrieved.values()), inputs.exclusions, cfg, run_date)
    without = inputs.users.join(candidates.select("request_id").distinct(), "request_id", "left_anti").select(
        F.lit("user").alias("request_type"),
        "request_id",
        F.lit(None).cast("string").alias("item_id"),
        F.lit(NO_CANDIDATES).alias("reason"),
        F.lit("every retriever came back empty: all items excluded, or the catalogue is empty").alias(
            "detail"
        ),
        "input_table",
    )
    rejects = as_rejects(inputs.rejected, run_date, "candidates", "interactions").unionByName(
        as_rejects(without, run_date, "candidates", F.col("input_table"))
    )
    return CandidateLists(candidates, rejects)
