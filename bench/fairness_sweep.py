"""Relevance versus provider fairness over lambda: the sweep that picks `fairness.weight`.

Runs the pipeline's own steps on a back-dated run (so the days after run_date are labels, by the rule of
`llmrank_spark/evaluate.py`): input tables, candidates, a ranked table, then `evaluate` with
`fairness.mode=sweep`, and prints, per lambda, NDCG@k and provider-exposure Gini@k against the model
order (the list before any fairness pass). Picks the lambda with the lowest Gini whose NDCG@k stays
within --max-ndcg-loss (relative) of the model order, and says whether it cuts Gini by --min-gini-cut.

The relevance scores (--scores): "retrieval" ranks by the blended retrieval score (the ranked table is
the candidates' top-K, model_version "retrieval-blend"); "model" runs the real rerank step (zero-shot
bi-encoder by default; slow on CPU: one MiniLM pass per candidate pair); "existing" keeps the run's
`ranked` partition from an earlier "model" run (evaluate re-orders its model order for every setting),
so several fairness settings share one rerank.

  python bench/fairness_sweep.py --dataset movielens --path /work/shared/data/ml-100k
  python bench/fairness_sweep.py --dataset sample
  python bench/fairness_sweep.py --dataset sample --lakehouse /tmp/sweep-sample --reuse \\
      --set fairness.min_long_tail_share=0.3
"""

from __future__ import annotations

import argparse
import tempfile

import pandas as pd
from pyspark.sql import functions as F

from llmrank_spark.config import load_config
from llmrank_spark.evaluation import MODEL, RETRIEVAL, sweep_points, value
from llmrank_spark.lakehouse import frame_from_pandas, get_spark, read_table
from llmrank_spark.pipeline import steps

# Back-dated runs with at least evaluate.label_days of events after them.
RUN_DATES = {"movielens": "1998-03-21", "sample": "2026-10-01"}


def retrieval_ranked(spark, config):
    """The run's candidates' top-K as the ranked table, ordered by the blended retrieval score, then the
    run's fairness pass applied (as the rerank step does)."""
    todays = read_table(spark, config, "candidates").where(F.col("run_date") == F.lit(config.run.run_date))
    lists = (
        todays.where(F.col("retrieval_rank") <= config.rerank.top_k)
        .withColumn("rank", F.col("retrieval_rank"))
        .withColumn("model_rank", F.col("retrieval_rank"))
        .withColumn("score", F.col("retrieval_score"))
        .withColumn("model_version", F.lit("retrieval-blend"))
        .toPandas()  # requests x top-K rows
    )
    items, interactions = read_table(spark, config, "items"), read_table(spark, config, "interactions")
    fair, _ = steps.fairness_pass(frame_from_pandas(spark, lists, "ranked"), items, interactions, config)
    return fair


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=["movielens", "sample"], required=True)
    parser.add_argument("--path", help="MovieLens 100K directory (--dataset movielens)")
    parser.add_argument("--scores", choices=["retrieval", "model", "existing"], default="retrieval")
    parser.add_argument("--lakehouse", help="lakehouse directory (default: a new temporary one)")
    parser.add_argument("--reuse", action="store_true", help="keep the lakehouse's input and candidates")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-ndcg-loss", type=float, default=0.02)
    parser.add_argument("--min-gini-cut", type=float, default=0.20)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    args = parser.parse_args(argv)
    lakehouse = args.lakehouse or tempfile.mkdtemp(prefix=f"sweep-{args.dataset}-")
    # The λ sweep is the fixed-weight control's; bench/fairness_targets.py measures targets.
    defaults = [f"run.run_date={RUN_DATES[args.dataset]}", "fairness.mode=sweep", "fairness.control=weight"]
    if args.dataset == "movielens":
        defaults.append("fairness.provider_attribute=year")  # ml-100k has no studio: release-year cohorts
    config = load_config(
        overrides=[f"spark.master={args.master}", f"lakehouse.root={lakehouse}", *defaults, *args.overrides]
    )
    spark = get_spark(config)
    if not args.reuse:
        if args.dataset == "movielens":
            if args.path is None:
                raise SystemExit("--dataset movielens needs --path, the directory holding the ml-100k files")
            steps.ingest_movielens(spark, config, args.path)
        else:
            steps.generate_sample(spark, config)
        steps.candidates(spark, config)
    if args.scores == "model":
        steps.rerank(spark, config)
    elif args.scores == "retrieval":
        with steps.StepRun(spark, config, "rerank") as run:
            run.write("ranked", retrieval_ranked(spark, config))
    steps.evaluate(spark, config)

    history = read_table(spark, config, "metrics").toPandas()
    metrics = history[pd.to_datetime(history.run_date).dt.date == config.run.run_date]
    print_sweep(metrics, config, args)


def interval(low: float, high: float) -> str:
    """The 95% bootstrap interval of an NDCG change; blank for the model order (the baseline itself)."""
    return "" if pd.isna(low) else f"[{low:+.1%}, {high:+.1%}]"


def print_sweep(metrics: pd.DataFrame, config, args) -> None:
    k = args.k
    base_ndcg, base_gini = value(metrics, MODEL, f"ndcg@{k}"), value(metrics, MODEL, f"provider_gini@{k}")
    base_tail = value(metrics, MODEL, f"exposure@{k}", "provider_group=long_tail")
    fair = config.fairness
    print(
        f"\n{args.dataset}, run_date {config.run.run_date}, scores: {args.scores} "
        f"({metrics.loc[metrics.step == MODEL, 'model_version'].dropna().iloc[0]}); "
        f"evaluated requests@{k}: {value(metrics, MODEL, f'evaluated_requests@{k}'):.0f}; "
        f"min_long_tail_share {fair.min_long_tail_share}, long_tail_head_share {fair.long_tail_head_share}, "
        f"provider: {fair.provider_attribute or 'brand'}, diversity {fair.diversity}\n"
    )
    print(
        f"| order | NDCG@{k} | NDCG change | 95% interval | provider Gini@{k} | Gini change "
        f"| long-tail exposure@{k} |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for label, step in (("retrieval order", RETRIEVAL), ("model order (baseline)", MODEL)):
        ndcg, gini = value(metrics, step, f"ndcg@{k}"), value(metrics, step, f"provider_gini@{k}")
        tail = value(metrics, step, f"exposure@{k}", "provider_group=long_tail")
        low, high = (value(metrics, step, f"ndcg@{k}_change_{end}") for end in ("low", "high"))
        print(
            f"| {label} | {ndcg:.4f} | {ndcg / base_ndcg - 1:+.1%} | {interval(low, high)} | {gini:.4f} | "
            f"{gini / base_gini - 1:+.1%} | {tail:.1%} |"
        )
    points = sweep_points(metrics, k)
    points = points.assign(gini_change=points.gini / base_gini - 1)
    for p in points.itertuples():
        print(
            f"| λ = {p.lam:.2f} | {p.ndcg:.4f} | {p.ndcg_change:+.1%} | "
            f"{interval(p.ndcg_change_low, p.ndcg_change_high)} | {p.gini:.4f} | "
            f"{p.gini_change:+.1%} | {p.long_tail:.1%} |"
        )
    within = points[points.ndcg_change >= -args.max_ndcg_loss]
    if within.empty:
        print(f"\nno λ keeps NDCG@{k} within {args.max_ndcg_loss:.0%} of the model order")
        return
    best = within.sort_values(["gini", "lam"]).iloc[0]
    verdict = "meets" if best.gini_change <= -args.min_gini_cut else "does NOT meet"
    print(
        f"\nlowest Gini with NDCG@{k} loss <= {args.max_ndcg_loss:.0%}: λ = {best.lam:.2f} "
        f"(NDCG {best.ndcg_change:+.1%}, Gini {best.gini_change:+.1%}, long-tail exposure "
        f"{base_tail:.1%} -> {best.long_tail:.1%}); it {verdict} the Gini cut of {args.min_gini_cut:.0%}"
    )


if __name__ == "__main__":
    main()
