"""Candidate retrieval recall: each retriever and the blend, on a leave-last-out split.

Every user's last interaction (latest event_ts, ties by item_id) is held out; the retrievers and the
blend see the rest, with run_date the day of the newest training event. Recall@K is the share of
users whose held-out item is in the top K of a list (metrics.recall_at_k); a retriever that proposes
nothing for a user scores 0 for them. Each retriever's output is persisted once and reused by the
blend, so the seconds column is that retriever's own cost. With --validation the last interaction is
dropped and the second-to-last held out instead: the split the blend's defaults were tuned on, so the
last-item figures stay a test the defaults never saw.

  python bench/candidate_recall.py --dataset movielens --path /work/shared/data/ml-100k
  python bench/candidate_recall.py --dataset movielens --path /work/shared/data/ml-100k --validation
  python bench/candidate_recall.py --dataset sample --set candidates.quotas='{covisit: 50, als: 30}'
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from llmrank_spark.config import SampleConfig, load_config
from llmrank_spark.lakehouse import frame_from_pandas, get_spark
from llmrank_spark.metrics import recall_at_k
from llmrank_spark.retrieval import blend, prepare_inputs, retrieve_all
from llmrank_spark.training import leave_last_out

CUTOFFS = (10, 50, 100)


def input_tables(dataset: str, path: str | None, sample: SampleConfig) -> dict[str, pd.DataFrame]:
    if dataset == "movielens":
        from llmrank_spark.data import load_movielens

        if path is None:
            raise SystemExit("--dataset movielens needs --path, the directory holding u.data, u.item, u.user")
        return load_movielens(path)
    from llmrank_spark.data import generate_sample

    return generate_sample(sample)


def recalls(lists: pd.DataFrame, held_out: pd.DataFrame) -> dict[int, float]:
    """Recall@K over every held-out user; users without a list count as misses."""
    return {
        k: recall_at_k(lists, held_out, k).reindex(held_out["request_id"].unique(), fill_value=0.0).mean()
        for k in CUTOFFS
    }


def timed_collect(frame: DataFrame, rank_column: str) -> tuple[pd.DataFrame, DataFrame, float]:
    started = time.perf_counter()
    frame = frame.persist()
    lists = frame.select("request_id", "item_id", F.col(rank_column).alias("rank")).toPandas()
    return lists, frame, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=["movielens", "sample"], required=True)
    parser.add_argument("--path", help="MovieLens 100K directory (--dataset movielens)")
    parser.add_argument("--validation", action="store_true", help="hold out the second-to-last item")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    args = parser.parse_args(argv)
    config = load_config(overrides=[f"spark.master={args.master}", *args.overrides])
    cfg = config.candidates
    spark = get_spark(config)

    tables = input_tables(args.dataset, args.path, config.sample)
    train, held_out = leave_last_out(tables["interactions"])
    if args.validation:
        train, held_out = leave_last_out(train)
    run_date = train["event_ts"].max().date()
    users = frame_from_pandas(spark, tables["users"], "users") if "users" in tables else None
    inputs = prepare_inputs(
        spark,
        frame_from_pandas(spark, tables["items"], "items"),
        frame_from_pandas(spark, train, "interactions"),
        users,
        cfg,
        run_date,
    )
    print(
        f"{args.dataset}: {len(tables['items']):,} items, {len(train):,} training events, "
        f"{len(held_out):,} held-out users ({'second-to-last' if args.validation else 'last'} item); "
        f"N = {cfg.n_per_request}, run_date {run_date}"
    )

    rows, persisted = [], []
    for source, frame in retrieve_all(inputs, cfg.n_per_request).items():
        lists, kept, seconds = timed_collect(frame, "source_rank")
        persisted.append(kept)
        rows.append((source, recalls(lists, held_out), lists["request_id"].nunique(), seconds))
    lists, _, seconds = timed_collect(blend(persisted, inputs.exclusions, cfg, run_date), "retrieval_rank")
    rows.append(("**blend**", recalls(lists, held_out), lists["request_id"].nunique(), seconds))

    print(f"\nquotas {cfg.quotas}, source_weights {cfg.source_weights}, fusion_k {cfg.fusion_k}\n")
    print("| list | " + " | ".join(f"recall@{k}" for k in CUTOFFS) + " | users with a list | seconds |")
    print("| --- |" + " ---: |" * (len(CUTOFFS) + 2))
    for name, recall, n_users, seconds in rows:
        cells = " | ".join(f"{recall[k]:.3f}" for k in CUTOFFS)
        print(f"| {name} | {cells} | {n_users:,} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
