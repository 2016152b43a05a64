"""The champion's features-only prerank against the retrieval order on back-dated runs, after `make demo`.

Over a lakehouse the demo (or your own train and nightly) wrote, for each `--date`: the candidates the
retrievers build from the events before that day and the ranking features of every (user, candidate),
judged by the evaluate step's labels (`evaluate.label_days` after the day, up to the data's end). Printed
per date: the NDCG@10 of the retrieval order, of the champion's (or `--version`'s) prerank, and of a
features-only LambdaMART fitted on the lists of the earlier dates whose labels end before that date
(time-aligned lists, like the served ones), each with its change against the retrieval order and its
95% bootstrap interval. Only LightGBM scores, no BERT: minutes on a laptop.

  python bench/features_over_time.py --config conf/demo.yaml \\
      --date 2026-09-04 --date 2026-09-18 --date 2026-10-02 --date 2026-10-16
"""

from __future__ import annotations

import argparse
import datetime as dt

import pandas as pd
from pyspark.sql import functions as F

from llmrank_spark.config import load_config
from llmrank_spark.evaluation.evaluate import user_labels
from llmrank_spark.events import end_of_day
from llmrank_spark.lakehouse import checkpointed, get_spark
from llmrank_spark.metrics import relative_change
from llmrank_spark.rerank import (
    FEATURES,
    FusionModel,
    FusionSettings,
    fit_fusion,
    ranking_features_from,
    read_manifest,
)
from llmrank_spark.retrieval import build_candidates, item_vectors
from llmrank_spark.training import artifact_dir, champion_version, newest_version
from llmrank_spark.training.champion import per_request_ndcg
from llmrank_spark.training.registry import registry_client

REQUEST = ["request_type", "request_id"]


def back_dated_run(
    spark, config, items, interactions, vectors, day: dt.date
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features of every user's candidates, labels) of a run dated `day`."""
    history = interactions.where(F.col("event_ts") < F.lit(end_of_day(day)))
    retrieved = build_candidates(spark, items, history, None, config.candidates, day, item_vectors=vectors)
    # Its long query plan cut, as the gate does: stacked under the features' plan it can outgrow a task's
    # stack (a StackOverflowError on this bench's first runs).
    lists = checkpointed(retrieved.candidates.where(F.col("request_type") == "user"))
    pairs = lists.select(*REQUEST, "item_id", "retrieval_rank", "source_ranks")
    features = ranking_features_from(pairs, retrieved.inputs).drop("source_ranks").toPandas()
    labels = user_labels(interactions, lists.select("request_id").distinct(), day, config.evaluate).toPandas()
    print(
        f"{day}: {features['request_id'].nunique()} lists, {labels['request_id'].nunique()} labelled",
        flush=True,
    )
    return features, labels


def ndcg_of_order(features: pd.DataFrame, labels: pd.DataFrame, scores, top_k: int) -> pd.Series:
    """NDCG@10 of every labelled request (the gate's `per_request_ndcg`), its list ordered by `scores`
    (ties: retrieval order) and cut at top_k."""
    ranked = features.assign(score=scores).sort_values(
        ["request_id", "score", "retrieval_rank"], ascending=[True, False, True]
    )
    ranked["rank"] = ranked.groupby("request_id").cumcount() + 1
    ranked = ranked[ranked["rank"] <= top_k][["request_id", "item_id", "rank"]]
    return per_request_ndcg(ranked, labels, pd.Index(sorted(labels["request_id"].unique())))


def labelled_lists(
    features: pd.DataFrame, labels: pd.DataFrame, day: dt.date, top_grade: float
) -> pd.DataFrame:
    """The lists with at least one label, graded in [0, 1], as LambdaMART's training lists."""
    graded = features.merge(labels, on=["request_id", "item_id"], how="left").fillna({"relevance": 0.0})
    graded = graded[graded.groupby("request_id")["relevance"].transform("max") > 0]
    graded = graded.assign(label=graded["relevance"] / top_grade, request_id=f"{day}:" + graded["request_id"])
    return graded.sort_values(["request_id", "item_id"], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="the config the lakehouse was written with")
    parser.add_argument("--date", dest="dates", action="append", required=True, type=dt.date.fromisoformat)
    parser.add_argument(
        "--version", type=int, help="a registered version (default: the champion, else the newest)"
    )
    args = parser.parse_args()
    config = load_config(args.config)
    spark = get_spark(config)
    tables = {
        name: spark.read.format("delta").load(config.table_path(name)) for name in ("items", "interactions")
    }
    known = tables["interactions"].where(F.col("event_type").isin(list(config.candidates.event_weights)))
    embeddings = spark.read.format("delta").load(config.table_path("item_embeddings"))
    vectors = item_vectors(embeddings, tables["items"], config.candidates).cache()

    if args.version is not None:
        version = registry_client(config).get_model_version(config.mlflow.model_name, str(args.version))
    else:
        version = champion_version(config) or newest_version(config)
    if version is None:
        raise SystemExit(f"no registered version in {config.lakehouse.root}: run `make demo` first")
    path = artifact_dir(config, version)
    manifest = read_manifest(path)
    if manifest.prerank is None:
        raise SystemExit(f"version {manifest.version} has no prerank: train it again with `llmrank train`")
    prerank = FusionModel.load(path, manifest.prerank)

    dates = sorted(args.dates)
    runs = {day: back_dated_run(spark, config, tables["items"], known, vectors, day) for day in dates}
    top_grade = float(max(config.evaluate.label_grades.values()))
    settings = FusionSettings(seed=config.train.seed)
    for day in dates:
        features, labels = runs[day]
        retrieval = ndcg_of_order(
            features, labels, -features["retrieval_rank"].to_numpy(float), config.rerank.top_k
        )
        orders = {
            "retrieval order": retrieval,
            f"prerank of {manifest.version}": ndcg_of_order(
                features, labels, prerank.score(features), config.rerank.top_k
            ),
        }
        earlier = [d for d in dates if (day - d).days >= config.evaluate.label_days]
        if earlier:
            lists = pd.concat([labelled_lists(*runs[d], d, top_grade) for d in earlier], ignore_index=True)
            held = lists["request_id"].isin(
                lists["request_id"].drop_duplicates().sample(frac=0.2, random_state=0)
            )
            fitted = fit_fusion(lists[~held], lists[held], list(FEATURES), settings, list_column="request_id")
            orders[f"LambdaMART on the runs of {', '.join(map(str, earlier))}"] = ndcg_of_order(
                features, labels, fitted.score(features), config.rerank.top_k
            )
        print(f"\nrun dated {day}: {len(retrieval)} labelled users")
        for name, ndcg in orders.items():
            change, low, high = relative_change(retrieval, ndcg)
            print(f"  {name:60s} NDCG@10 {ndcg.mean():.4f}  {change:+.1%} [{low:+.1%}, {high:+.1%}]")


if __name__ == "__main__":
    main()
