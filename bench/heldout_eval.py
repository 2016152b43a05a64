"""Held-out next-item evaluation on MovieLens 100K: baselines and fine-tuned rerankers, one protocol.

Protocol (docs/training.md): every user's last rating (latest event_ts, ties by item_id) is held out;
everything else is the training data, written as the lakehouse's interactions table. Each evaluated
user's list is the held-out item plus 19 items drawn uniformly (seed 0) from those the user never
rated; the list is ranked and scored by NDCG@1/5/10/20 and MRR (llmrank_spark.metrics), the held-out
item being the one relevant item. Rankers:

- popularity: the item's number of training ratings;
- retrieval order: the item's place in the user's `candidates` list (built by `llmrank candidates` on
  the training data), items not in it after those in it;
- zero-shot MiniLM bi-encoder: cosine of the context and item texts the rerank step builds;
- every registered reranker version (mlflow.model_name, or --models): fine-tuned logit fused with the
  retrieval features.

With --train LOSS[,LOSS...] the script runs the `train` step once per loss (warm start off, so each
starts from MiniLM) and evaluates each new version as soon as it is registered; without it, it
evaluates --models or every registered version. With --ablation, each reranker is also scored with
its logit alone, its
features alone, and each feature's weight zeroed (the trained head, not retrained).

  python bench/heldout_eval.py --path /work/shared/data/ml-100k --lakehouse /tmp/ml100k-heldout \\
      --train listnet,lambdaloss --users 300 --ablation
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from llmrank_spark.config import Config, load_config
from llmrank_spark.data import load_movielens
from llmrank_spark.events import ITEM_EVENTS
from llmrank_spark.lakehouse import (
    frame_from_pandas,
    get_spark,
    latest_version,
    read_table,
    table_exists,
    write_table,
)
from llmrank_spark.metrics import mrr, ndcg_at_k
from llmrank_spark.pipeline import steps
from llmrank_spark.rerank import (
    BERT_SCORE,
    FEATURES,
    FusionHead,
    FusionModel,
    FusionSettings,
    ModelSpec,
    PairScorer,
    ScoringSettings,
    feature_matrix,
    fit_fusion,
    fused_scores,
    ranking_features,
    read_manifest,
    relevance_levels,
    retrieval_features,
    zero_shot_spec,
)
from llmrank_spark.text import item_text_frame, user_context_frame
from llmrank_spark.training import (
    artifact_dir,
    leave_last_out,
    newest_version,
    rank_by_score,
    registry_client,
    training_end,
    training_lists,
)

NEGATIVES = 19
CUTOFFS = (1, 5, 10, 20)


def evaluation_lists(
    interactions: pd.DataFrame, held_out: pd.DataFrame, n_users: int | None, catalogue: np.ndarray
) -> pd.DataFrame:
    """(list_id, user_id, item_id, label): the held-out item and NEGATIVES never-rated items per user."""
    rng = np.random.default_rng(0)
    users = held_out.sort_values("request_id", ignore_index=True)
    if n_users is not None and n_users < len(users):
        users = users.iloc[np.sort(rng.choice(len(users), n_users, replace=False))]
    rated = interactions.groupby("user_id")["item_id"].agg(set)
    rows = []
    for user, item in zip(users["request_id"], users["item_id"], strict=True):
        unseen = np.setdiff1d(catalogue, np.array(sorted(rated[user]), dtype=object))
        negatives = rng.choice(unseen, NEGATIVES, replace=False)
        rows += [(user, user, item, 1.0)] + [(user, user, negative, 0.0) for negative in negatives]
    return pd.DataFrame(rows, columns=["list_id", "user_id", "item_id", "label"])


def quality(lists: pd.DataFrame, scores: np.ndarray) -> dict[str, float]:
    ranked = rank_by_score(lists, np.asarray(scores, dtype=np.float64))
    labels = lists.rename(columns={"list_id": "request_id", "label": "relevance"})[
        ["request_id", "item_id", "relevance"]
    ]
    result = {f"NDCG@{k}": 100 * ndcg_at_k(ranked, labels, k).mean() for k in CUTOFFS}
    result["MRR"] = 100 * mrr(ranked, labels).mean()
    return result


def texts_for(lists: pd.DataFrame, train: pd.DataFrame, items: pd.DataFrame, cfg) -> tuple[list, list]:
    """(context, item text) per list row, built as the rerank step builds them for run_date."""
    history = train.merge(items, on="item_id")
    contexts = user_context_frame(history, cfg).set_index("request_id")["context_text"]
    texts = item_text_frame(items, cfg).set_index("item_id")["item_text"]
    return lists["user_id"].map(contexts).tolist(), lists["item_id"].map(texts).tolist()


def with_ranking_features(spark, lists: pd.DataFrame, config: Config) -> pd.DataFrame:
    """`lists` with every ranking feature of its (user, item) pairs as of the run date, computed by the
    same Spark function as in training and serving (`features.ranking_features`)."""
    pairs = spark.createDataFrame(
        lists[["user_id", "item_id"]].drop_duplicates().rename(columns={"user_id": "request_id"})
    ).withColumn("request_type", F.lit("user"))
    candidates = read_table(spark, config, "candidates")
    candidates = candidates.where(F.col("run_date") == F.lit(config.run.run_date))
    pairs = pairs.join(
        candidates.select("request_id", "item_id", "retrieval_rank", "source_ranks"),
        ["request_id", "item_id"],
        "left",
    )
    features = ranking_features(
        spark,
        pairs,
        read_table(spark, config, "items"),
        read_table(spark, config, "interactions"),
        None,
        config.candidates,
        config.run.run_date,
    )
    frame = features.select(F.col("request_id").alias("user_id"), "item_id", *FEATURES).toPandas()
    return lists.merge(frame, on=["user_id", "item_id"], how="left")


def reranker_scores(
    lists: pd.DataFrame, train: pd.DataFrame, items: pd.DataFrame, config: Config, path: str
) -> tuple[np.ndarray, np.ndarray, FusionHead | None]:
    """(BERT logits, retrieval features, head) of a fine-tuned artifact on the evaluation lists."""
    manifest = read_manifest(path)
    cfg = config.rerank.model_copy(
        update={
            "max_length": manifest.max_length,
            "context_template": manifest.context_template,
            "item_template": manifest.item_template,
            "item_attributes": manifest.item_attributes,
        }
    )
    contexts, item_texts = texts_for(lists, train, items, cfg)
    scorer = PairScorer.from_spec(
        ModelSpec("cross_encoder", manifest.version, path), _cpu(), ScoringSettings.from_config(cfg)
    )
    head = manifest.fusion_head
    features = retrieval_features(lists, head.features if head else [])
    return scorer.score(contexts, item_texts), features, head


def ablations(logits: np.ndarray, features: np.ndarray, head: FusionHead) -> dict[str, np.ndarray]:
    """The trained head with parts switched off (weights zeroed, not retrained)."""
    variants = {
        "logit alone": fused_scores(logits, features, None),
        "features alone (logit weight 0)": fused_scores(
            logits, features, head.model_copy(update={"logit_weight": 0.0})
        ),
    }
    for j, name in enumerate(head.features):
        weights = list(head.feature_weights)
        weights[j] = 0.0
        variants[f"without {name}"] = fused_scores(
            logits, features, head.model_copy(update={"feature_weights": weights})
        )
    return variants


def learner_ablations(spark, config: Config, featured: pd.DataFrame) -> dict[str, np.ndarray]:
    """The same learners fitted on the train step's fusion lists without the BERT score: what the
    features give alone, by LightGBM LambdaMART and by XGBoost rank:ndcg (the choice of learner)."""
    import xgboost

    # The lists the train step built: the same interactions, before the gate's days.
    lists = training_lists(
        spark,
        read_table(spark, config, "items"),
        read_table(spark, config, "interactions").where(F.col("event_ts") < F.lit(training_end(config))),
        read_table(spark, config, "users"),
        config,
        data_snapshot=f"interactions@v{latest_version(spark, config, 'interactions')}",
    )["fusion"].sort_values(["list_id", "item_id"], kind="mergesort", ignore_index=True)
    ids = lists["list_id"].drop_duplicates()
    held = lists["list_id"].isin(ids.iloc[int(len(ids) * 0.8) :])
    cfg = config.train
    settings = FusionSettings(
        trees=cfg.fusion_trees, learning_rate=cfg.fusion_learning_rate, leaves=cfg.fusion_leaves
    )
    lightgbm_alone = fit_fusion(lists[~held], lists[held], list(FEATURES), settings)
    ranker = xgboost.XGBRanker(
        objective="rank:ndcg",
        n_estimators=cfg.fusion_trees,
        learning_rate=cfg.fusion_learning_rate,
        max_leaves=cfg.fusion_leaves,
        tree_method="hist",
        eval_metric="ndcg@10",
        early_stopping_rounds=30,
        random_state=cfg.seed,
        n_jobs=1,
    )

    def levels(frame: pd.DataFrame) -> np.ndarray:
        return relevance_levels(frame["label"].to_numpy(dtype=np.float64))

    def qid(frame: pd.DataFrame) -> np.ndarray:
        return pd.factorize(frame["list_id"])[0]

    train_part, held_part = lists[~held], lists[held]
    ranker.fit(
        feature_matrix(train_part, FEATURES),
        levels(train_part),
        qid=qid(train_part),
        eval_set=[(feature_matrix(held_part, FEATURES), levels(held_part))],
        eval_qid=[qid(held_part)],
        verbose=False,
    )
    return {
        "features alone, LightGBM LambdaMART": lightgbm_alone.score(featured),
        "features alone, XGBoost rank:ndcg": ranker.predict(feature_matrix(featured, FEATURES)),
    }


def _cpu():
    import torch

    return torch.device("cpu")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--path", required=True, help="MovieLens 100K directory")
    parser.add_argument("--lakehouse", required=True, help="lakehouse root for the training data and models")
    parser.add_argument("--train", default="", help="losses to train first, comma-separated")
    parser.add_argument("--models", nargs="*", help="artifact directories (default: every registered one)")
    parser.add_argument("--users", type=int, help="evaluate a seeded sample of this many users (default all)")
    parser.add_argument("--ablation", action="store_true", help="also score each reranker's head ablations")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    tables = load_movielens(args.path)
    train, held_out = leave_last_out(tables["interactions"])
    run_date = train["event_ts"].max().date()
    config = load_config(
        overrides=[
            f"spark.master={args.master}",
            f"lakehouse.root={args.lakehouse}",
            f"run.run_date={run_date}",
            *args.overrides,
        ]
    )
    spark = get_spark(config)
    if not table_exists(spark, config, "interactions"):
        for table, frame in (("items", tables["items"]), ("interactions", train), ("users", tables["users"])):
            write_table(frame_from_pandas(spark, frame, table), config, table)
    if not table_exists(spark, config, "candidates"):
        steps.candidates(spark, config)
    items = tables["items"]
    lists = evaluation_lists(tables["interactions"], held_out, args.users, items["item_id"].to_numpy())
    candidates = (
        read_table(spark, config, "candidates")
        .where(F.col("run_date") == F.lit(run_date))
        .select(F.col("request_id").alias("user_id"), "item_id", "retrieval_rank", "source_ranks")
        .toPandas()
    )
    lists = lists.merge(candidates, on=["user_id", "item_id"], how="left")
    popularity = train["item_id"].value_counts()
    # The popularity feature as the rerank step computes it: the item's events up to run_date.
    lists[ITEM_EVENTS] = lists["item_id"].map(popularity).fillna(0).astype(float)
    in_list = lists["retrieval_rank"].notna()
    rankers: dict[str, Callable[[], np.ndarray]] = {
        "popularity": lambda: lists["item_id"].map(popularity).fillna(0).to_numpy(float),
        "retrieval order": lambda: np.where(in_list, -lists["retrieval_rank"].fillna(0), -np.inf),
        "zero-shot MiniLM bi-encoder": lambda: PairScorer.from_spec(
            zero_shot_spec(), _cpu(), ScoringSettings.from_config(config.rerank)
        ).score(*texts_for(lists, train, items, config.rerank)),
    }
    print(
        f"\n{lists['list_id'].nunique()} users, {len(lists):,} pairs; held-out item in the candidate list "
        f"for {lists.loc[lists['label'] > 0, 'retrieval_rank'].notna().mean():.1%} of them\n"
    )
    header = "| ranker | " + " | ".join(f"NDCG@{k}" for k in CUTOFFS) + " | MRR | seconds |"
    rows = [header, "| --- |" + " ---: |" * (len(CUTOFFS) + 2)]

    def add(name: str, scores: np.ndarray, seconds: float) -> None:
        cells = " | ".join(f"{value:.1f}" for value in quality(lists, scores).values())
        rows.append(f"| {name} | {cells} | {seconds:.0f} |")
        print(rows[-1], flush=True)

    for name, ranker in rankers.items():
        started = time.perf_counter()
        scores = ranker()
        add(name, scores, time.perf_counter() - started)

    featured = None

    def evaluate(path: str) -> None:
        nonlocal featured
        manifest = read_manifest(path)
        started = time.perf_counter()
        logits, features, head = reranker_scores(lists, train, items, config, path)
        if manifest.fusion is not None:
            if featured is None:
                featured = with_ranking_features(spark, lists, config)
            fusion = FusionModel.load(path, manifest.fusion)
            served = fusion.score(featured.assign(**{BERT_SCORE: logits}))
        else:
            served = fused_scores(logits, features, head)
        seconds = time.perf_counter() - started
        add(f"fine-tuned, {manifest.loss} (`{manifest.version}`)", served, seconds)
        if args.ablation and manifest.fusion is not None:
            add(f"&nbsp;&nbsp;{manifest.loss}: BERT logit alone", logits, 0)
            for variant, scores in learner_ablations(spark, config, featured).items():
                add(f"&nbsp;&nbsp;{variant}", scores, 0)
        elif args.ablation and head is not None:
            for variant, scores in ablations(logits, features, head).items():
                add(f"&nbsp;&nbsp;{manifest.loss}: {variant}", scores, 0)

    losses = list(filter(None, args.train.split(",")))
    for loss in losses:
        # Warm start off: every loss starts from MiniLM, so the table compares losses, not histories.
        train_cfg = config.train.model_copy(update={"loss": loss, "warm_start": False})
        steps.train(spark, config.model_copy(update={"train": train_cfg}))
        newest = newest_version(config)
        assert newest is not None  # the train step just registered it
        evaluate(artifact_dir(config, newest))  # evaluated at once: a long run keeps what it measured
    if not losses:
        versions = registry_client(config).search_model_versions(f"name='{config.mlflow.model_name}'")
        by_number = sorted(versions, key=lambda version: int(version.version))
        for path in args.models or [artifact_dir(config, version) for version in by_number]:
            evaluate(path)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
