"""Fairness targets: each strategy calibrated to the same exposure goal, and what it costs in NDCG@10.

For each run date, the pipeline's own steps build the lists (input tables, `candidates`; the ranked
lists are each request's top 50 candidates by blended retrieval score, as in bench/fairness_sweep.py),
and labels follow the evaluate step's rule (each user's events in the 30 days after run_date). Then, on
the driver, every strategy (ours: list, run; the references: FA*IR, DetConstSort) is calibrated to each
target by the job's own `calibrate_run`, on all of the run's lists, and the run's lists are re-ordered
at that strength. Printed per (target, strategy): the strength, the target's reached value on the whole
run, whether it is met, the NDCG@10 change against the model order with its 95% paired bootstrap
interval over the evaluated requests, and the calibration's seconds.

  python bench/fairness_targets.py --dataset sample --run-dates 2026-10-01,2026-09-24
  python bench/fairness_targets.py --dataset movielens --path ../shared/data/ml-100k \\
      --run-dates 1998-03-21,1998-02-21
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time

import pandas as pd
from pyspark.sql import functions as F

from llmrank_spark.config import FairnessConfig, FairnessTargetConfig, load_config
from llmrank_spark.evaluation import catalogue_frame, item_counts_until, one_request_column, user_labels
from llmrank_spark.lakehouse import get_spark, read_table
from llmrank_spark.metrics import ndcg_at_k, relative_change
from llmrank_spark.pipeline import steps
from llmrank_spark.postprocess import (
    calibrate_run,
    check_targets,
    provider_policy,
    run_reorderer,
    with_providers,
)

STRATEGIES = ("list", "run", "fa_ir", "det_const_sort")
# The targets measured: name -> the goals it sets (provider_gini_cut is a relative cut of the Gini).
TARGETS = {
    "Gini -10%": {"provider_gini_cut": 0.1},
    "Gini -20%": {"provider_gini_cut": 0.2},
    "long tail >= 50%": {"provider_gini_cut": None, "min_long_tail_exposure": 0.5},
}


def run_lists(spark, config) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.Series]:
    """(model-order lists, labels, catalogue with providers, item counts) of the run, on the driver."""
    run_date = config.run.run_date
    todays = read_table(spark, config, "candidates").where(F.col("run_date") == F.lit(run_date))
    ranked = (
        todays.where(F.col("retrieval_rank") <= config.rerank.top_k)
        .withColumn("rank", F.col("retrieval_rank"))
        .withColumn("score", F.col("retrieval_score"))
        .select("request_type", "request_id", "item_id", "rank", "score")
    )
    interactions, items = read_table(spark, config, "interactions"), read_table(spark, config, "items")
    requests = ranked.select("request_id").distinct()
    labels = user_labels(interactions, requests, run_date, config.evaluate).withColumn(
        "request_type", F.lit("user")
    )
    lists = one_request_column(ranked).toPandas()
    judged = one_request_column(labels).select("request_id", "item_id", "relevance").toPandas()
    catalogue = with_providers(catalogue_frame(items), config.fairness.provider_attribute)
    return lists, judged, catalogue, item_counts_until(interactions, run_date)


def measure(lists, labels, catalogue, counts, base: FairnessConfig, run_date: dt.date, k: int) -> None:
    policy = provider_policy(catalogue, counts, base.long_tail_head_share)
    baseline = ndcg_at_k(lists, labels, k)
    print(
        f"\nrun_date {run_date}: {lists.request_id.nunique()} requests, {len(baseline)} with labels; "
        f"{len(policy.need)} providers, {len(policy.long_tail)} in the long tail\n"
    )
    print(
        "| target | strategy | strength | reached | met | NDCG@10 change | 95% interval | calibration s |\n"
        "| --- | --- | ---: | --- | --- | ---: | --- | ---: |"
    )
    for name, goals in TARGETS.items():
        for strategy in STRATEGIES:
            target = FairnessTargetConfig(calibration_requests=len(lists), **goals)
            cfg = base.model_copy(update={"strategy": strategy, "control": "target", "target": target})
            start = time.perf_counter()
            calibration = calibrate_run(lists, policy, cfg)
            seconds = time.perf_counter() - start
            if calibration.strength is None:
                reached = "; ".join(c.describe() for c in calibration.checks)
                print(f"| {name} | {strategy} | unreachable | {reached} | no | | | {seconds:.0f} |")
                continue
            fair = run_reorderer(policy, cfg, strength=calibration.strength, model_order=lists)(lists)
            checks = check_targets(fair, lists, policy, cfg.target, cfg.exposure_k)
            change, low, high = relative_change(baseline, ndcg_at_k(fair, labels, k))
            reached = "; ".join(
                f"{c.goal} {c.reached:.4f} (<= {c.required:.4f})"
                if c.at_most
                else f"{c.goal} {c.reached:.4f} (>= {c.required:.4f})"
                for c in checks
            )
            met = "yes" if all(c.met for c in checks) else "NO"
            print(
                f"| {name} | {strategy} | {calibration.strength:.3f} | {reached} | {met} | {change:+.1%} | "
                f"[{low:+.1%}, {high:+.1%}] | {seconds:.0f} |"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=["movielens", "sample"], required=True)
    parser.add_argument("--path", help="MovieLens 100K directory (--dataset movielens)")
    parser.add_argument("--run-dates", required=True, help="comma-separated back-dated runs")
    parser.add_argument("--lakehouse", help="lakehouse directory (default: a new temporary one)")
    parser.add_argument("--reuse", action="store_true", help="keep the lakehouse's inputs and candidates")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args(argv)
    lakehouse = args.lakehouse or tempfile.mkdtemp(prefix=f"targets-{args.dataset}-")
    extra = ["fairness.provider_attribute=year"] if args.dataset == "movielens" else []
    for number, run_date in enumerate(args.run_dates.split(",")):
        overrides = [f"spark.master={args.master}", f"lakehouse.root={lakehouse}", f"run.run_date={run_date}"]
        config = load_config(overrides=[*overrides, *extra])
        spark = get_spark(config)
        if not args.reuse:
            if number == 0 and args.dataset == "movielens":
                if args.path is None:
                    raise SystemExit(
                        "--dataset movielens needs --path, the directory holding the ml-100k files"
                    )
                steps.ingest_movielens(spark, config, args.path)
            elif number == 0:
                steps.generate_sample(spark, config)
            steps.candidates(spark, config)
        lists, labels, catalogue, counts = run_lists(spark, config)
        measure(lists, labels, catalogue, counts, config.fairness, config.run.run_date, args.k)


if __name__ == "__main__":
    main()
