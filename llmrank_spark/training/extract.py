"""Spark extraction of training lists: the split in time, the candidate lists and the text joins."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from llmrank_spark.config import Config, RerankConfig, TrainConfig
from llmrank_spark.events import ITEM_EVENTS, item_event_counts
from llmrank_spark.lakehouse import in_hashed_share
from llmrank_spark.rerank import (
    ranking_features_from,
)
from llmrank_spark.text import item_text_frame, render_item_texts
from llmrank_spark.training.fusion_training import fusion_lists, fusion_users
from llmrank_spark.training.lists import (
    ITEM,
    LABEL,
    LIST,
    sample_lists,
    subsample,
    target_contexts,
    target_grades,
)
from llmrank_spark.training.query_encoder import encoder_triples
from llmrank_spark.training.query_lists import (
    heldout_queries,
    query_grades,
    sample_query_lists,
    served_query_lists,
)

# ---- Spark layer -------------------------------------------------------------------------------------


def split_for_training(interactions: DataFrame, cfg: TrainConfig) -> tuple[DataFrame, DataFrame]:
    """(history, targets): each user's `lists_per_user` newest items (one row per item, at its latest
    event) are targets; history is every event before the user's first target, what the retrievers see.

    Users with fewer than `min_history` history events give no targets (their events stay in history).
    """
    per_item = interactions.groupBy("user_id", "item_id").agg(F.max("event_ts").alias("event_ts"))
    newest_first = Window.partitionBy("user_id").orderBy(F.col("event_ts").desc(), F.col("item_id"))
    targets = per_item.withColumn("recency", F.row_number().over(newest_first)).where(
        F.col("recency") <= cfg.lists_per_user
    )
    cutoff = targets.groupBy("user_id").agg(F.min("event_ts").alias("cutoff"))
    before = interactions.join(cutoff, "user_id").where(F.col("event_ts") < F.col("cutoff"))
    enough = before.groupBy("user_id").count().where(F.col("count") >= cfg.min_history)
    cutoff = cutoff.join(enough, "user_id", "left_semi")
    history = (
        interactions.join(cutoff, "user_id", "left")
        .where(F.col("cutoff").isNull() | (F.col("event_ts") < F.col("cutoff")))
        .drop("cutoff")
    )
    return history, targets.join(cutoff, "user_id", "left_semi").drop("recency")


# Target users are drawn in Spark, before anything is collected, this many times as many as the caps can
# use: the seeded draws on the driver then still choose among more lists than they keep.
_OVERSAMPLE = 2


def users_to_collect(cfg: TrainConfig) -> int:
    """How many target users' events and candidates the list sampling can use, oversampled: BERT's users
    (training lists come `lists_per_user - 1` per user, validation one) over the share of users that are
    not the fusion's, and the fusion's over theirs."""
    bert_users = max(cfg.max_validation_lists, math.ceil(cfg.max_train_lists / (cfg.lists_per_user - 1)))
    if cfg.fusion != "lambdamart":
        return _OVERSAMPLE * bert_users
    share = cfg.fusion_user_share
    return math.ceil(_OVERSAMPLE * max(bert_users / (1 - share), cfg.max_fusion_lists / share))


def sampled_targets(targets: DataFrame, cfg: TrainConfig) -> DataFrame:
    """`targets` (user_id, ...) of a hashed sample of about `users_to_collect` users, every target of a
    kept user; all of them when there are no more. Only this sample's events and candidates reach the
    driver, however many shoppers the interactions hold."""
    users = targets.select("user_id").distinct().count()
    share = users_to_collect(cfg) / max(users, 1)
    return targets if share >= 1 else targets.where(in_hashed_share(share, "user_id"))


def _assemble_lists(
    lists: pd.DataFrame,
    contexts: pd.Series,
    texts: pd.DataFrame,
    candidates: pd.DataFrame,
    key: str,
    item_events: pd.DataFrame,
) -> pd.DataFrame:
    """Lists (their request in column `key`) with the context text of each list, the item texts and the
    retrieval features of each (request, item)."""
    ranks = candidates[["request_id", ITEM, "source_ranks"]].rename(columns={"request_id": key})
    frame = lists.assign(context_text=lists[LIST].map(contexts))
    # Left merges keep the lists' row order: each list's rows stay together, its positive first.
    frame = frame.merge(texts, on=ITEM, how="left").merge(ranks, on=[key, ITEM], how="left")
    return frame.merge(item_events, on=ITEM, how="left")


def _query_lists(
    candidates: pd.DataFrame,
    queries: pd.DataFrame,
    labels: pd.DataFrame,
    texts: pd.DataFrame,
    item_events: pd.DataFrame,
    cfg: TrainConfig,
    rng: np.random.Generator,
) -> dict[str, pd.DataFrame]:
    """{"train", "validation", "heldout_queries"}: sampled lists of a seeded fifth of the training queries
    validate, of the rest (`max_query_lists` at most) train; the held-out queries' whole candidate lists
    judge whether the version may rank queries (`query_verdict`)."""
    graded = query_grades(labels)
    query_ids = pd.Series(sorted(candidates["request_id"].unique()), dtype=object)
    heldout = heldout_queries(query_ids, cfg.heldout_query_share)
    training = rng.permutation(query_ids[~heldout].to_numpy())
    validating = max(1, len(training) // 5)
    chosen = {
        "train": training[validating:][: cfg.max_query_lists],
        "validation": training[:validating],
        "heldout_queries": query_ids[heldout].to_numpy(),
    }
    text_of = queries.set_index("query_id")["query_text"]
    built = {}
    for name, ids in chosen.items():
        part = candidates[candidates["request_id"].isin(ids)]
        judged = graded[graded["query_id"].isin(ids)]
        if name == "heldout_queries":
            lists = served_query_lists(judged, part)
        else:
            lists = sample_query_lists(judged, part, cfg.list_size, rng)
        contexts = lists.drop_duplicates(LIST).set_index(LIST)["query_id"].map(text_of)
        built[name] = _assemble_lists(lists, contexts, texts, part, "query_id", item_events)
    return built


def _query_encoder_data(
    queries: pd.DataFrame, labels: pd.DataFrame, items: pd.DataFrame, config: Config, rng: np.random.Generator
) -> dict[str, pd.DataFrame]:
    """{"query_encoder_pairs": the training queries' triples (`encoder_triples`), "query_encoder_heldout":
    the held-out queries' judgements (query_id, query_text, item_id, relevance), "semantic_item_texts":
    (item_id, item_text) of the catalogue as the query semantic retriever embeds it}."""
    cfg, candidates_cfg = config.train, config.candidates
    texts = render_item_texts(
        items, candidates_cfg.semantic_item_template, candidates_cfg.semantic_item_attributes
    )
    item_text = pd.Series(texts.to_numpy(), index=items[ITEM].to_numpy())
    heldout = heldout_queries(queries["query_id"], cfg.heldout_query_share)
    return {
        "query_encoder_pairs": encoder_triples(
            queries[~heldout], labels, item_text, cfg.query_encoder_pairs, rng
        ),
        "query_encoder_heldout": labels.merge(queries[heldout], on="query_id")[
            ["query_id", "query_text", ITEM, "relevance"]
        ],
        "semantic_item_texts": item_text.rename("item_text").rename_axis(ITEM).reset_index(),
    }


def _sampled_queries(queries: DataFrame, query_labels: DataFrame, cfg: TrainConfig) -> DataFrame:
    """The judged queries training reads (query_id, query_text): a hashed sample large enough for
    `max_query_lists` training lists, their validation fifth and the held-out share, so a search log of
    millions of queries stays in Spark."""
    judged = queries.select("query_id", "query_text").join(
        query_labels.select("query_id").distinct(), "query_id", "left_semi"
    )
    wanted = cfg.max_query_lists * 1.25 / (1 - cfg.heldout_query_share)
    share = min(1.0, wanted / max(judged.count(), 1))
    return judged.where(in_hashed_share(share, "query_id"))


# TrainConfig fields that change how a model learns from the lists, not which lists are built.
FIT_ONLY_FIELDS = {
    "loss", "batch_lists", "epochs", "learning_rate", "head_learning_rate", "classifier_learning_rate",
    "trainable_layers", "eval_every_steps", "patience", "fusion_features", "warm_start", "model_root",
    "threads", "distributor_processes", "query_encoder_epochs", "query_encoder_batch_size",
}  # fmt: skip
# Lists built in this process, by data snapshot and list settings: training several losses on one
# snapshot (bench/heldout_eval.py) runs the retrievers once, not once per loss.
BUILT_LISTS: dict[str, dict[str, pd.DataFrame]] = {}


def training_text(config: Config) -> RerankConfig:
    """The text settings a version trains with: the rerank config's, cut at `train.max_length`."""
    return config.rerank.model_copy(update={"max_length": config.train.max_length})


def training_lists(
    spark: SparkSession,
    items: DataFrame,
    interactions: DataFrame,
    users: DataFrame | None,
    config: Config,
    data_snapshot: str,
    queries: DataFrame | None = None,
    query_labels: DataFrame | None = None,
    item_vectors: DataFrame | None = None,
) -> dict[str, pd.DataFrame]:
    """{"train": lists, "validation": lists}: rows (list_id, item_id, label, context_text, item_text,
    source_ranks, item_events), `list_size` per list, from the time split and the candidate retrievers;
    with `queries` and their graded `query_labels`, also the queries' lists (`_query_lists`) and
    "heldout_queries", the lists of the queries it never trains on. `item_vectors` (item_id, embedding)
    are the catalogue's stored text vectors; None encodes them."""
    from llmrank_spark.retrieval import build_candidates, item_embeddings

    cfg = config.train
    judged_queries = None
    if (
        queries is not None
        and query_labels is not None
        and cfg.max_query_lists
        and config.candidates.rank_queries
    ):
        judged_queries = _sampled_queries(queries, query_labels, cfg)
    key = "|".join(
        [
            data_snapshot,
            str(config.run.run_date),
            config.table_path("interactions"),
            config.candidates.model_dump_json(),
            config.rerank.model_dump_json(),
            cfg.model_dump_json(exclude=FIT_ONLY_FIELDS),
            str(judged_queries is not None),
        ]
    )
    if key in BUILT_LISTS:
        return BUILT_LISTS[key]
    rng = np.random.default_rng(cfg.seed)
    text_cfg = training_text(config)

    history, targets = split_for_training(interactions, cfg)
    targets = sampled_targets(targets, cfg)
    newest = history.agg(F.max("event_ts")).collect()[0][0]
    if newest is None:
        raise ValueError("interactions: no events before any user's targets; nothing to train on")
    vectors = item_embeddings(items, config.candidates) if item_vectors is None else item_vectors
    retrieved = build_candidates(
        spark,
        items,
        history,
        users,
        config.candidates,
        newest.date(),
        queries=judged_queries,
        item_vectors=vectors,
    )
    every_list = retrieved.candidates
    candidates = every_list.where(F.col("request_type") == "user")
    target_users = targets.select("user_id").distinct()
    targets_pd: pd.DataFrame = targets.toPandas()
    targets_pd = targets_pd.sort_values(["user_id", "event_ts", "item_id"], ignore_index=True)
    if targets_pd.empty:
        raise ValueError(
            f"interactions: no user has {cfg.min_history} events before their {cfg.lists_per_user} newest "
            f"items; lower train.min_history or train.lists_per_user"
        )
    events = interactions.join(target_users, "user_id", "left_semi").toPandas()
    candidates_pd: pd.DataFrame = (
        candidates.join(target_users.withColumnRenamed("user_id", "request_id"), "request_id", "left_semi")
        .select("request_id", ITEM, "retrieval_rank", "source_ranks")
        .toPandas()
    )
    # Spark returns rows in no fixed order; sorted, the seeded sampling draws the same lists every run.
    candidates_pd = candidates_pd.sort_values(["request_id", ITEM], ignore_index=True)
    items_pd: pd.DataFrame = items.toPandas()
    # Only a user template reads the users table, and only the sampled users' rows reach the driver.
    users_pd = (
        users.join(target_users, "user_id", "left_semi").toPandas()
        if users is not None and text_cfg.user_template
        else None
    )
    item_events: pd.DataFrame = item_event_counts(history, newest.date()).toPandas()

    # The newest target of each user is the validation slice; the older ones are training lists.
    targets_pd[LIST] = [f"{u}@{i}" for u, i in zip(targets_pd["user_id"], targets_pd[ITEM], strict=True)]
    is_validation = ~targets_pd.duplicated("user_id", keep="last")
    targets_pd[LABEL] = target_grades(targets_pd, events, cfg).to_numpy()
    # The LambdaMART fusion learns from users whose lists BERT never sees, so it learns how far to trust
    # BERT on lists that are new to it, as every served list is.
    for_fusion = (
        fusion_users(targets_pd["user_id"], cfg.fusion_user_share)
        if cfg.fusion == "lambdamart"
        else pd.Series(False, index=targets_pd.index)
    )
    bert_targets = targets_pd[~for_fusion]
    is_validation = is_validation[~for_fusion]
    chosen = {
        "train": subsample(bert_targets[~is_validation], cfg.max_train_lists, rng),
        "validation": subsample(bert_targets[is_validation], cfg.max_validation_lists, rng),
    }
    texts = item_text_frame(items_pd, text_cfg)
    categories = items_pd.set_index(ITEM)["category"]
    popularity = item_events.set_index(ITEM)[ITEM_EVENTS]
    built = {}
    for name, part in chosen.items():
        lists = sample_lists(part, candidates_pd, events, categories, cfg, rng, popularity)
        contexts = target_contexts(events, items_pd, part, text_cfg, users_pd).set_axis(part[LIST])
        lists = lists.assign(user_id=lists[LIST].map(part.set_index(LIST)["user_id"]))
        built[name] = _assemble_lists(lists, contexts, texts, candidates_pd, "user_id", item_events)
    if cfg.fusion == "lambdamart":
        fusion_targets = targets_pd[for_fusion]
        chosen_users = subsample(fusion_targets[["user_id"]].drop_duplicates(), cfg.max_fusion_lists, rng)[
            "user_id"
        ]
        fusion_targets = fusion_targets[fusion_targets["user_id"].isin(chosen_users)]
        lists = fusion_lists(fusion_targets, candidates_pd, events, categories.index.to_numpy(), cfg, rng)
        # The pairs go to Spark from the driver's copy of the candidates, not as a join with the
        # candidates' query plan: stacked under the features' plan it outgrows a task's stack.
        user_pairs = lists[["user_id", ITEM]].drop_duplicates().rename(columns={"user_id": "request_id"})
        ranked = user_pairs.merge(candidates_pd, on=["request_id", ITEM], how="left")
        ranked = ranked.astype({"retrieval_rank": object}).where(ranked.notna(), None)
        pairs = spark.createDataFrame(
            ranked, "request_id string, item_id string, retrieval_rank int, source_ranks map<string,int>"
        ).withColumn("request_type", F.lit("user"))
        features = ranking_features_from(pairs, retrieved.inputs)
        features_pd: pd.DataFrame = features.drop("request_type", "source_ranks", "retrieval_rank").toPandas()
        lists = lists.merge(
            features_pd.rename(columns={"request_id": "user_id"}), on=["user_id", ITEM], how="left"
        )
        # One context per user, as served on the day after their history: everything before their targets.
        cutoffs = fusion_targets.groupby("user_id", as_index=False)["event_ts"].min()
        cutoffs = cutoffs.assign(**{LIST: cutoffs["user_id"], ITEM: ""})
        contexts = target_contexts(events, items_pd, cutoffs, text_cfg, users_pd).set_axis(cutoffs[LIST])
        lists = lists.assign(context_text=lists["user_id"].map(contexts))
        built["fusion"] = lists.merge(texts, on=ITEM, how="left")
    if judged_queries is not None and query_labels is not None:
        query_candidates: pd.DataFrame = (
            every_list.where(F.col("request_type") == "query")
            .select("request_id", ITEM, "retrieval_rank", "source_ranks")
            .toPandas()
        )
        query_candidates = query_candidates.sort_values(["request_id", ITEM], ignore_index=True)
        labels_pd: pd.DataFrame = query_labels.join(judged_queries, "query_id", "left_semi").toPandas()
        labels_pd = labels_pd.sort_values(["query_id", ITEM], ignore_index=True)
        queries_pd: pd.DataFrame = judged_queries.toPandas()
        by_part = _query_lists(query_candidates, queries_pd, labels_pd, texts, item_events, cfg, rng)
        for name, lists in by_part.items():
            built[name] = pd.concat([built[name], lists], ignore_index=True) if name in built else lists
        built |= _query_encoder_data(queries_pd, labels_pd, items_pd, config, rng)
        # What the query fusion reads (query_fusion.py): every judged query, its grades, the catalogue's
        # values and the items' events before the split.
        built |= {
            "judged_queries": queries_pd[["query_id", "query_text"]],
            "query_labels": labels_pd[["query_id", ITEM, "relevance"]],
            "item_values": items_pd.reindex(columns=[ITEM, "category", "attributes"]),  # attributes optional
            "item_events": item_events,
        }
    BUILT_LISTS[key] = built
    return built
