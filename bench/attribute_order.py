"""Attribute order on the embedded sample: agreement with the generator's truth, faithfulness, cost.

Runs generate-sample -> candidates -> rerank -> attributes (the nightly step functions, into a scratch
lakehouse) on a bounded sample, then measures:

  agreement     per user segment, attributes ordered by mean occlusion importance over all the segment's
                (request, ranked item) rows, against `sample_truth` (each segment's driving attributes
                and their weights in the generator's choice model): Kendall tau (scipy) over the truth's
                attributes, and its mean over segments; and the same measure with the generator's own
                choice model as the scorer (occlusion of a driver that matches the shopper's preferred
                value drops its utility by the driver's weight), over the same ranked items: what the
                aggregation recovers with a perfect model, so the gap between the two is the reranker's;
                with the values the served context's profile states in place of the generator's
                preferences (when the model is served a profile): what a model that reads its context
                perfectly could reach; and with a scorer that knows each segment's drivers and how its
                shoppers' preferred values spread, but not the shopper's own
                (`segment_only_importances`): what a model that learned nothing from a shopper's
                history could reach
  faithfulness  for every ranked item with at least 3 scored attributes: the score drop when its top-2
                attributes are removed together against the drop when 2 attributes drawn at random
                (seeded, uniformly among its scored attributes) are removed; the mean of both and the
                share of items where the top-2 drop is larger. Scored in process with the same model,
                texts and contexts as the job (checked: its single-attribute drops match the table's)
  cost          pairs scored per ranked item, and the seconds of each step

  python bench/attribute_order.py                                     # zero-shot, ~10 min on 2 cores
  python bench/attribute_order.py --set rerank.mode=cross_encoder --set rerank.model_path=PATH
  python bench/attribute_order.py --lakehouse DIR --measure-only --set ...   # re-measure a run's tables
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch
from pyspark.sql import functions as F
from scipy.stats import kendalltau  # scipy comes with sentence-transformers, a runtime dependency

from llmrank_spark.config import load_config
from llmrank_spark.data import simulate
from llmrank_spark.explain import (
    ITEM_KEYS,
    item_attributes,
    occluded_item,
    rank_attributes,
    served_score_scale,
)
from llmrank_spark.lakehouse import get_spark, read_table
from llmrank_spark.pipeline import steps
from llmrank_spark.rerank import PairScorer, ScoringSettings, model_for, with_contexts
from llmrank_spark.text import preferred_values, render_item_texts, user_history

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BOUNDED_SAMPLE = [
    "sample.n_items=1200",
    "sample.n_users=300",
    "sample.n_events=15000",
    "sample.n_queries=30",
    "candidates.n_per_request=30",
    "rerank.top_k=10",
    "attributes.top_k_items=5",
    "run.run_date=2026-11-01",
]


def segment_agreement(orders: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per segment: Kendall tau between mean importance and truth weight over the truth's attributes.

    `orders` holds the user rows of `attribute_order` with their segment. An attribute of the truth that
    no ranked item of the segment has gets no mean: it is left out of that segment's tau and reported.
    """
    means = (
        orders.groupby(["segment", "attribute"])["importance"]
        .agg(mean_importance="mean", support="size")
        .reset_index()
    )
    ranked = rank_attributes(means, ["segment"], "mean_importance")
    rows = []
    for segment, drivers in truth.groupby("segment"):
        ours = ranked[ranked["segment"] == segment].set_index("attribute")
        present = drivers[drivers["attribute"].isin(ours.index)]
        tau = kendalltau(present["weight"], ours.loc[present["attribute"], "mean_importance"]).statistic
        rows.append(
            {
                "segment": segment,
                "truth": " > ".join(drivers.sort_values("rank")["attribute"]),
                "measured (rank among all attributes: mean importance)": " > ".join(
                    f"{a} ({int(ours.loc[a, 'rank'])}: {ours.loc[a, 'mean_importance']:+.4f})"
                    for a in ours.loc[present["attribute"]].sort_values("rank").index
                ),
                "top attribute overall": ours.sort_values("rank").index[0],
                "missing": ", ".join(sorted(set(drivers["attribute"]) - set(present["attribute"]))) or "-",
                "rows": int(orders["segment"].eq(segment).sum()),
                "tau": tau,
            }
        )
    return pd.DataFrame(rows)


def _driver_rows(orders: pd.DataFrame, items: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """`orders` with the item's category and the attribute's driver weight in the segment (NaN: none)."""
    return orders.merge(items[["item_id", "category"]], on="item_id").merge(
        truth[["segment", "attribute", "weight"]], on=["segment", "attribute"], how="left"
    )


def matching_importances(
    orders: pd.DataFrame, items: pd.DataFrame, truth: pd.DataFrame, wanted: pd.DataFrame
) -> pd.DataFrame:
    """`orders` with each importance replaced by what occlusion gives when the scorer's utility is the
    generator's, with `wanted` (user_id, category, attribute, value) as each shopper's preferred values:
    the driver's weight where the item's value is the wanted one in its category (removing it loses the
    match), else 0 (a non-driver, or another value).

    With the generator's own preferences: what the aggregation recovers with a perfect model. With the
    values the served context's profile states (`text.preferred_values`): what a model that reads its
    context perfectly, and knows each segment's drivers, could reach.
    """
    wanted = wanted.rename(columns={"user_id": "request_id", "value": "wanted"})
    keys = ["request_id", "category", "attribute"]
    rows = _driver_rows(orders, items, truth).merge(wanted[[*keys, "wanted"]], on=keys, how="left")
    return rows.assign(importance=rows["weight"].fillna(0.0).where(rows["value"].eq(rows["wanted"]), 0.0))


def segment_only_importances(
    orders: pd.DataFrame, items: pd.DataFrame, world_preferences: pd.DataFrame, truth: pd.DataFrame
) -> pd.DataFrame:
    """`orders` with each importance replaced by what occlusion gives when the scorer knows the shopper's
    segment but not their own preferred values: the expected utility, weight x the share of the segment's
    shoppers who prefer the item's value in its category, minus what is expected of the category's
    average item (removing the value leaves that average). What a model that learned the segments, and
    nothing from the shopper's history, would give."""
    keys = ["segment", "category", "attribute"]
    preferring = world_preferences.groupby([*keys, "value"]).size()
    preferring = (preferring / preferring.groupby(level=keys).transform("sum")).rename("preferring")
    values = pd.DataFrame(
        [
            (item.category, name, value)
            for item in items.itertuples()
            for name, value in [*dict(item.attributes or {}).items(), ("brand", item.brand)]
        ],
        columns=["category", "attribute", "value"],
    )
    in_catalogue = values.value_counts() / values.groupby(["category", "attribute"]).size()
    matches = preferring.reset_index().merge(in_catalogue.rename("in_catalogue").reset_index())
    average = (matches["preferring"] * matches["in_catalogue"]).groupby([matches[k] for k in keys]).sum()
    rows = (
        _driver_rows(orders, items, truth)
        .merge(preferring.reset_index(), on=[*keys, "value"], how="left")
        .merge(average.rename("average").reset_index(), on=keys, how="left")
    )
    expected_gain = rows["preferring"].fillna(0.0) - rows["average"].fillna(0.0)
    return rows.assign(importance=rows["weight"].fillna(0.0) * expected_gain)


def catalogue_keys(items: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(item_id, category, brand) of every item: what tells two sample catalogues apart."""
    return set(items[["item_id", "category", "brand"]].astype(str).itertuples(index=False, name=None))


def faithfulness(
    orders: pd.DataFrame, items: pd.DataFrame, contexts: pd.DataFrame, config, seed: int
) -> tuple[pd.DataFrame, float]:
    """Score drops of removing each item's top-2 attributes and 2 random ones, per (request, item).

    Also returns the largest difference between a single-attribute drop scored here and the job's
    importance for it: the check that this in-process scoring reproduces the job's.
    """
    spec, rerank = model_for(config.rerank)
    scorer = PairScorer.from_spec(spec, torch.device("cpu"), ScoringSettings.from_config(rerank))
    rng = np.random.default_rng(seed)
    by_id = items.set_index("item_id", drop=False)
    context_of = contexts.set_index(["request_id", "request_type"])["context_text"]
    records, variants = [], []
    for (request_id, request_type, item_id), rows in orders.groupby(ITEM_KEYS, sort=True):
        if len(rows) < 3:
            continue
        item = by_id.loc[item_id].to_dict()
        names = [name for name, _ in item_attributes(item, rerank, config.attributes)]
        top2 = rows.sort_values("rank")["attribute"].head(2).tolist()
        random2 = rng.choice(names, 2, replace=False).tolist()
        top1 = top2[:1]
        records.append(
            {
                "request_id": request_id,
                "request_type": request_type,
                "item_id": item_id,
                "attributes": len(names),
                "random_is_top2": set(random2) == set(top2),
                "job_top1_importance": rows.sort_values("rank")["importance"].iloc[0],
            }
        )
        context = context_of[(request_id, request_type)]
        for removed in ([], top2, random2, top1):
            variants.append({**occluded_item(item, removed, rerank, config.attributes), "context": context})
    frame = pd.DataFrame(variants)
    texts = render_item_texts(frame, rerank.item_template, rerank.item_attributes)
    scores = scorer.score(frame["context"].tolist(), texts.tolist()).astype(float).reshape(-1, 4)
    scores *= served_score_scale(spec)  # in served-score units, as the job's importances are
    result = pd.DataFrame(records).assign(
        full=scores[:, 0],
        drop_top2=scores[:, 0] - scores[:, 1],
        drop_random2=scores[:, 0] - scores[:, 2],
        drop_top1=scores[:, 0] - scores[:, 3],
    )
    check = float(np.abs(result["drop_top1"] - result["job_top1_importance"]).max())
    return result, check


def markdown_table(frame: pd.DataFrame) -> str:
    """A frame as a Markdown table, floats to 3 decimals (pandas' to_markdown needs tabulate)."""
    cells = frame.map(lambda v: f"{v:+.3f}" if isinstance(v, float) else str(v))
    lines = [list(frame.columns), ["---"] * len(frame.columns), *cells.values.tolist()]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random attribute pairs")
    parser.add_argument("--lakehouse", help="keep the tables here (default: a scratch directory)")
    pipeline = {
        "generate-sample": steps.generate_sample,
        "candidates": steps.candidates,
        "rerank": steps.rerank,
        "attributes": steps.attributes,
    }
    steps_in_order = list(pipeline)
    parser.add_argument(
        "--from-step",
        choices=steps_in_order,
        default=steps_in_order[0],
        help="with --lakehouse: reuse the tables of the steps before this one",
    )
    parser.add_argument(
        "--measure-only",
        action="store_true",
        help="with --lakehouse: run no step, measure the tables already there",
    )
    args = parser.parse_args(argv)
    if args.measure_only and not args.lakehouse:
        parser.error("--measure-only needs --lakehouse: the lakehouse whose tables to measure")

    with tempfile.TemporaryDirectory(prefix="llmrank-attr-bench-") as scratch:
        config = load_config(
            overrides=[
                f"lakehouse.root={args.lakehouse or scratch + '/lakehouse'}",
                f"spark.master={args.master}",
                "spark.conf={spark.sql.shuffle.partitions: '4'}",
                *BOUNDED_SAMPLE,
                *args.overrides,
            ]
        )
        spark = get_spark(config)
        seconds = {}
        to_run = [] if args.measure_only else steps_in_order[steps_in_order.index(args.from_step) :]
        for name in to_run:
            step = pipeline[name]
            started = time.perf_counter()
            step(spark, config)
            seconds[name] = time.perf_counter() - started

        today = F.col("run_date") == F.lit(config.run.run_date)
        orders = read_table(spark, config, "attribute_order").where(today).toPandas()
        ranked = read_table(spark, config, "ranked").where(today)
        items = read_table(spark, config, "items").toPandas()
        users = read_table(spark, config, "users").toPandas()
        truth = read_table(spark, config, "sample_truth").toPandas()
        top = ranked.where(F.col("rank") <= config.attributes.top_k_items).select(*ITEM_KEYS)
        _, rerank = model_for(config.rerank)
        contexts = (
            with_contexts(
                top.select("request_id", "request_type").distinct(),
                read_table(spark, config, "interactions"),
                read_table(spark, config, "items"),
                rerank,
                config.run.run_date,
                read_table(spark, config, "queries"),
                read_table(spark, config, "users"),
            )
            .select("request_id", "request_type", "context_text")
            .toPandas()
        )
        engaged = user_history(
            read_table(spark, config, "interactions"), read_table(spark, config, "items"), config.run.run_date
        ).toPandas()
        ranked_items = top.count()
        spark.stop()

    model_version = orders["model_version"].iloc[0]
    user_orders = orders[orders["request_type"] == "user"].merge(
        users[["user_id", "segment"]], left_on="request_id", right_on="user_id"
    )
    agreement = segment_agreement(user_orders, truth)
    world = simulate(config.sample)
    if catalogue_keys(world.tables["items"]) != catalogue_keys(items):
        raise SystemExit(
            f"the items table in {config.lakehouse.root} is not the sample that config's `sample` settings "
            "generate, so the generator's preferences do not describe it; pass the --set sample.* "
            "overrides the lakehouse was generated with"
        )
    ceiling = segment_agreement(matching_importances(user_orders, items, truth, world.preferences), truth)
    segment_only = segment_agreement(
        segment_only_importances(user_orders, items, world.preferences, truth), truth
    )
    result, check = faithfulness(orders, items, contexts, config, args.seed)
    scored_items = orders.groupby(ITEM_KEYS).ngroups

    print(f"\nmodel {model_version}; config overrides: {' '.join(BOUNDED_SAMPLE + args.overrides)}")
    print(f"\nSegment agreement (Kendall tau over each segment's drivers; {len(user_orders)} rows)")
    print(markdown_table(agreement))
    print(f"mean Kendall tau over {len(agreement)} segments: {agreement['tau'].mean():+.3f}")
    print("\nThe same measure with the generator's choice model as the scorer, over the same ranked items")
    print(markdown_table(ceiling))
    print(f"mean Kendall tau over {len(ceiling)} segments: {ceiling['tau'].mean():+.3f}")
    if rerank.profile_categories:
        stated = preferred_values(engaged, rerank.profile_categories, rerank.item_attributes)
        readable = segment_agreement(matching_importances(user_orders, items, truth, stated), truth)
        print("\nThe same with the values the context's profile states as the shopper's preferred ones")
        print(markdown_table(readable))
        print(f"mean Kendall tau over {len(readable)} segments: {readable['tau'].mean():+.3f}")
    print("\nThe same with a scorer that knows the shopper's segment, not their own preferred values")
    print(markdown_table(segment_only))
    print(f"mean Kendall tau over {len(segment_only)} segments: {segment_only['tau'].mean():+.3f}")

    wins = result["drop_top2"] > result["drop_random2"]
    ties = result["drop_top2"] == result["drop_random2"]
    print(f"\nFaithfulness over {len(result)} (request, item) rows with >= 3 scored attributes")
    print(f"  mean score drop, top-2 removed:    {result['drop_top2'].mean():+.4f}")
    print(f"  mean score drop, random-2 removed: {result['drop_random2'].mean():+.4f}")
    coincide = int((ties & result["random_is_top2"]).sum())
    print(f"  top-2 drop > random-2 drop: {wins.mean():.1%} of items")
    print(f"  ties: {int(ties.sum())}, of which {coincide} where the random pair was the top pair")
    print(f"  in-process single-attribute drop vs the job's importance: max |diff| {check:.2e}")

    pairs = scored_items + len(orders)
    print(f"\nCost: {ranked_items} ranked items in the top {config.attributes.top_k_items}")
    print(f"  {scored_items} with attributes; {pairs} pairs scored = {pairs / scored_items:.2f} per item")
    for name, value in seconds.items():
        print(f"  {name}: {value:.1f} s")
    if "attributes" in seconds:
        print(f"  attributes step: {pairs / seconds['attributes']:.1f} pairs/s (with joins and both writes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
