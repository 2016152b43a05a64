"""Attribute order on the embedded sample: agreement with the generator's truth, and cost.

Runs generate-sample -> candidates -> rerank -> attributes (the nightly step functions, into a scratch
lakehouse), then measures against `sample_truth` (each segment's driving attributes and their weights in
the generator's choice model):

  segment tau   per user segment, attributes ordered by the `attribute_order_by_segment` importance
                (averaged over categories, weighted by support) against the truth's weights: Kendall tau
                (scipy) over the truth's attributes, then the mean over segments
  cold tau      per cold shopper (<= 3 events up to the run date) with at least two of their segment's
                drivers among their top items' attributes: their `attribute_order` importances (mean per
                attribute over their rows) against their segment's truth, then the mean over shoppers
  query named attribute first
                per query whose text names a value of an attribute of its class's items (as a whole
                word, in the catalogue's words or a shopper's): whether the query's first attribute in its
                class is a named one (behaviour only: the query estimate the attributes step computes)
  new query named attribute first
                with --new-queries: the same for the queries made new (no judged items, no search
                sessions), from their `attribute_order` rows (the attribute model's order), beside their
                class's order
  cost          seconds of each step, and of the attributes step per ranked request

It prints those three lines in a fixed form (`segment tau: X.XXX`, `cold tau: X.XXX`,
`query named attribute first: P.P%`), and with --new-queries a fourth
(`new query named attribute first: P.P% (its class's order: P.P%)`). With
`--set attributes.method=occlusion` it also measures the occlusion explanation's faithfulness and
ceilings (docs/attributes.md).

  python bench/attribute_order.py                             # behaviour, the demo's sample, ~7 min
  python bench/attribute_order.py --set sample.seed=11        # a second sample world
  python bench/attribute_order.py --new-queries 0.2           # a fifth of the queries new, ~7 min
  python bench/attribute_order.py --set attributes.method=occlusion --set rerank.mode=zero_shot_bi_encoder \
      --bounded                                               # the occlusion figures, ~10 min
  python bench/attribute_order.py --lakehouse DIR --measure-only --set ...   # re-measure a run's tables
"""

from __future__ import annotations

import argparse
import os
import re
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
from llmrank_spark.data.sample_lakehouse import SHOPPER_PHRASES
from llmrank_spark.events import events_until
from llmrank_spark.explain import (
    ITEM_KEYS,
    attribute_values,
    behaviour_importance,
    item_attributes,
    occluded_item,
    rank_attributes,
    served_score_scale,
)
from llmrank_spark.lakehouse import get_spark, read_table
from llmrank_spark.lakehouse.delta import sql_name
from llmrank_spark.pipeline import steps
from llmrank_spark.rerank import PairScorer, ScoringSettings, model_for, with_contexts
from llmrank_spark.text import preferred_values, render_item_texts, user_history

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The demo's sample; the ranking itself is not what is measured, so the retrieval order serves.
BEHAVIOUR_RUN = [
    "candidates.n_per_request=30",
    "rerank.mode=retrieval",
    "run.run_date=2026-11-01",
]
# A smaller sample, for the occlusion method: its cost grows with the ranked items scored.
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


def segment_tau(by_segment: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per segment: Kendall tau of the segment table's importance (support-weighted over categories)."""
    users = by_segment[by_segment["segment_type"] == "user_segment"]
    weighted = (
        users.assign(
            weighted=users["mean_importance"] * users["support"], support=users["support"].astype(float)
        )
        .groupby(["segment", "attribute"])[["weighted", "support"]]
        .sum()
    )
    means = (weighted["weighted"] / weighted["support"]).rename("importance").reset_index()
    return segment_agreement(means, truth)


def cold_shoppers(interactions: pd.DataFrame, events: int = 3) -> set[str]:
    """Users with at most `events` events in the log the run saw."""
    counts = interactions.groupby("user_id").size()
    return set(counts[counts <= events].index)


def cold_tau(orders: pd.DataFrame, users: pd.DataFrame, truth: pd.DataFrame, cold: set[str]) -> pd.DataFrame:
    """Per cold shopper with >= 2 of their segment's drivers among their rows: tau against the truth."""
    rows = orders[(orders["request_type"] == "user") & orders["request_id"].isin(cold)].merge(
        users[["user_id", "segment"]], left_on="request_id", right_on="user_id"
    )
    weights = truth.set_index(["segment", "attribute"])["weight"]
    result = []
    for (user, segment), own in rows.groupby(["request_id", "segment"]):
        means = own.groupby("attribute")["importance"].mean()
        drivers = weights.loc[segment]
        present = drivers[drivers.index.isin(means.index)]
        if len(present) < 2:
            continue
        result.append(
            {
                "user": user,
                "segment": segment,
                "sources": ",".join(sorted(own["source"].unique())),
                "tau": kendalltau(present.to_numpy(), means.loc[present.index].to_numpy()).statistic,
            }
        )
    return pd.DataFrame(result, columns=["user", "segment", "sources", "tau"])


def named_attributes(query_text: str, category_values: pd.DataFrame) -> set[str]:
    """Attributes of the category's items one of whose values the query names as a whole word, in the
    catalogue's words or a shopper's (the sample's `SHOPPER_PHRASES`: "cheap" names the budget band)."""
    return {
        row.attribute
        for row in category_values.itertuples()
        for term in (row.value, *SHOPPER_PHRASES.get(row.value.lower(), ()))
        if re.search(rf"(?<!\w){re.escape(term)}(?!\w)", query_text, re.IGNORECASE)
    }


def query_named_first(contexts: pd.DataFrame, queries: pd.DataFrame, values: pd.DataFrame) -> pd.DataFrame:
    """Per query naming an attribute value: whether its first attribute (in its class) is a named one."""
    by_category = {category: frame for category, frame in values.groupby("category")}
    rows = []
    for query in queries.itertuples():
        named = named_attributes(query.query_text, by_category.get(query.query_class, values.iloc[:0]))
        own = contexts[
            (contexts["request_id"] == query.query_id) & (contexts["category"] == query.query_class)
        ]
        if not named or own.empty:
            continue
        first = own.sort_values(["importance", "attribute"], ascending=[False, True])["attribute"].iloc[0]
        rows.append({"query": query.query_text, "named": ", ".join(sorted(named)), "first": first})
    frame = pd.DataFrame(rows, columns=["query", "named", "first"])
    return frame.assign(
        named_first=[f in n.split(", ") for f, n in zip(frame["first"], frame["named"], strict=True)]
    )


def make_queries_new(spark, config, share: float, seed: int) -> set[str]:
    """A seeded `share` of the lakehouse's queries made new: their judged items and the events of their
    search sessions are deleted, so no behaviour of theirs reaches the attributes step."""
    ids = sorted(row["query_id"] for row in read_table(spark, config, "queries").select("query_id").collect())
    chosen = sorted(np.random.default_rng(seed).choice(ids, round(share * len(ids)), replace=False))
    listed = ", ".join(f"'{query_id}'" for query_id in chosen)
    for table in ("query_labels", "interactions"):
        spark.sql(f"DELETE FROM {sql_name(config.table_path(table))} WHERE query_id IN ({listed})")
    return set(chosen)


def new_query_named_first(
    orders: pd.DataFrame, by_segment: pd.DataFrame, queries: pd.DataFrame, values: pd.DataFrame, new: set[str]
) -> pd.DataFrame:
    """Per new query naming an attribute value: whether its first attribute in its class is a named one,
    in `attribute_order` (mean importance over its ranked items there) and in its class's order."""
    by_category = {category: frame for category, frame in values.groupby("category")}
    classes = by_segment[by_segment["segment_type"] == "query_class"]
    rows = []
    for query in queries[queries["query_id"].isin(new)].itertuples():
        named = named_attributes(query.query_text, by_category.get(query.query_class, values.iloc[:0]))
        own = orders[
            (orders["request_type"] == "query")
            & (orders["request_id"] == query.query_id)
            & orders["item_id"].isin(values.loc[values["category"] == query.query_class, "item_id"])
        ]
        group = classes[
            (classes["segment"] == query.query_class) & (classes["category"] == query.query_class)
        ]
        if not named or own.empty or group.empty:
            continue
        means = own.groupby("attribute")["importance"].mean().reset_index()
        first = means.sort_values(["importance", "attribute"], ascending=[False, True])["attribute"].iloc[0]
        class_first = group.sort_values("rank")["attribute"].iloc[0]
        rows.append(
            {
                "query": query.query_text,
                "named": ", ".join(sorted(named)),
                "sources": ",".join(sorted(own["source"].unique())),
                "first": first,
                "class first": class_first,
                "named_first": first in named,
                "class_named_first": class_first in named,
            }
        )
    return pd.DataFrame(
        rows,
        columns=["query", "named", "sources", "first", "class first", "named_first", "class_named_first"],
    )


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
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the bench's random draws: the queries --new-queries makes new, and with occlusion "
        "the random attribute pairs",
    )
    parser.add_argument("--bounded", action="store_true", help="the smaller sample occlusion was measured on")
    parser.add_argument("--lakehouse", help="keep the tables here (default: a scratch directory)")
    parser.add_argument(
        "--new-queries",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="after generate-sample, delete the judged items and search sessions of this seeded share of "
        "the queries: new queries, whose attributes only the attribute model orders from their text",
    )
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
    run_settings = BOUNDED_SAMPLE if args.bounded else BEHAVIOUR_RUN

    with tempfile.TemporaryDirectory(prefix="llmrank-attr-bench-") as scratch:
        config = load_config(
            overrides=[
                f"lakehouse.root={args.lakehouse or scratch + '/lakehouse'}",
                f"spark.master={args.master}",
                "spark.conf={spark.sql.shuffle.partitions: '4'}",
                *run_settings,
                *args.overrides,
            ]
        )
        spark = get_spark(config)
        seconds = {}
        new_queries: set[str] = set()
        to_run = [] if args.measure_only else steps_in_order[steps_in_order.index(args.from_step) :]
        for name in to_run:
            step = pipeline[name]
            started = time.perf_counter()
            step(spark, config)
            seconds[name] = time.perf_counter() - started
            if name == "generate-sample" and args.new_queries:
                new_queries = make_queries_new(spark, config, args.new_queries, args.seed)

        today = F.col("run_date") == F.lit(config.run.run_date)
        orders = read_table(spark, config, "attribute_order").where(today).toPandas()
        by_segment = read_table(spark, config, "attribute_order_by_segment").where(today).toPandas()
        ranked = read_table(spark, config, "ranked").where(today)
        items = read_table(spark, config, "items")
        users = read_table(spark, config, "users").toPandas()
        queries = read_table(spark, config, "queries")
        truth = read_table(spark, config, "sample_truth").toPandas()
        interactions = read_table(spark, config, "interactions")
        seen = events_until(interactions, config.run.run_date).select("user_id").toPandas()
        ranked_requests = ranked.select(*ITEM_KEYS[:2]).distinct().count()
        if config.attributes.method == "behaviour":
            # The query estimate the step computed (no query is ranked yet, so none reaches the tables).
            estimate = behaviour_importance(
                items,
                interactions,
                config.attributes,
                config.run.run_date,
                users=read_table(spark, config, "users"),
                queries=queries,
                query_labels=read_table(spark, config, "query_labels"),
            )
            contexts = estimate.contexts.where(F.col("request_type") == "query").toPandas()
            values = attribute_values(items, config.attributes.item_fields).toPandas()
            queries_pd = queries.toPandas()
            named = query_named_first(contexts, queries_pd[~queries_pd["query_id"].isin(new_queries)], values)
            new_named = new_query_named_first(orders, by_segment, queries_pd, values, new_queries)
        else:
            occlusion_report(spark, config, orders, ranked, users, truth, args.seed)
            named, new_named = None, None
        spark.stop()

    segments = segment_tau(by_segment, truth)
    cold = cold_tau(orders, users, truth, cold_shoppers(seen))
    print(f"\nmethod {config.attributes.method}; config overrides: {' '.join(run_settings + args.overrides)}")
    print("\nSegment agreement (Kendall tau over each segment's drivers; attribute_order_by_segment)")
    print(markdown_table(segments))
    print(f"\nCold shoppers (<= 3 events): {len(cold)} with >= 2 drivers among their rows")
    print(markdown_table(cold.groupby(["segment", "sources"])["tau"].agg(["size", "mean"]).reset_index()))
    if named is not None:
        missed = named[~named["named_first"]]
        print(f"\nQueries naming a value: {len(named)}; first attribute not a named one: {len(missed)}")
        if len(missed):
            print(markdown_table(missed.head(10)))
    if new_named is not None and len(new_queries):
        print(
            f"\nNew queries (no judged items, no search sessions): {len(new_queries)}; "
            f"naming a value: {len(new_named)}"
        )
        print(
            markdown_table(
                new_named.groupby("sources")[["named_first", "class_named_first"]].mean().reset_index()
            )
        )
    print(f"\nsegment tau: {segments['tau'].mean():.3f}")
    print(f"cold tau: {cold['tau'].mean():.3f}")
    if named is not None:
        print(f"query named attribute first: {100 * named['named_first'].mean():.1f}%")
    if new_named is not None and len(new_queries):
        print(
            f"new query named attribute first: {100 * new_named['named_first'].mean():.1f}% "
            f"(its class's order: {100 * new_named['class_named_first'].mean():.1f}%)"
        )
    print(f"\nCost: {ranked_requests} ranked requests, {len(orders)} attribute_order rows")
    for name, value in seconds.items():
        print(f"  {name}: {value:.1f} s")
    if "attributes" in seconds:
        print(
            f"  attributes step: {1000 * seconds['attributes'] / ranked_requests:.1f} ms per ranked request"
        )
    return 0


def occlusion_report(spark, config, orders, ranked, users, truth, seed) -> None:
    """The occlusion method's own measures: its agreement ceilings and faithfulness (docs/attributes.md)."""
    items = read_table(spark, config, "items").toPandas()
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
    user_orders = orders[orders["request_type"] == "user"].merge(
        users[["user_id", "segment"]], left_on="request_id", right_on="user_id"
    )
    world = simulate(config.sample)
    if catalogue_keys(world.tables["items"]) != catalogue_keys(items):
        raise SystemExit(
            f"the items table in {config.lakehouse.root} is not the sample that config's `sample` settings "
            "generate, so the generator's preferences do not describe it; pass the --set sample.* "
            "overrides the lakehouse was generated with"
        )
    agreement = segment_agreement(user_orders, truth)
    print(f"\nOcclusion: segment agreement over the ranked rows (mean {agreement['tau'].mean():+.3f})")
    print(markdown_table(agreement))
    ceiling = segment_agreement(matching_importances(user_orders, items, truth, world.preferences), truth)
    print(f"\nWith the generator's choice model as the scorer: mean tau {ceiling['tau'].mean():+.3f}")
    if rerank.profile_categories:
        stated = preferred_values(engaged, rerank.profile_categories, rerank.item_attributes)
        readable = segment_agreement(matching_importances(user_orders, items, truth, stated), truth)
        print(f"With the values the context's profile states: mean tau {readable['tau'].mean():+.3f}")
    segment_only = segment_agreement(
        segment_only_importances(user_orders, items, world.preferences, truth), truth
    )
    print(f"With a scorer that knows only the segment: mean tau {segment_only['tau'].mean():+.3f}")

    result, check = faithfulness(orders, items, contexts, config, seed)
    wins = result["drop_top2"] > result["drop_random2"]
    ties = result["drop_top2"] == result["drop_random2"]
    print(f"\nFaithfulness over {len(result)} (request, item) rows with >= 3 scored attributes")
    print(f"  mean score drop, top-2 removed:    {result['drop_top2'].mean():+.4f}")
    print(f"  mean score drop, random-2 removed: {result['drop_random2'].mean():+.4f}")
    coincide = int((ties & result["random_is_top2"]).sum())
    print(f"  top-2 drop > random-2 drop: {wins.mean():.1%} of items")
    print(f"  ties: {int(ties.sum())}, of which {coincide} where the random pair was the top pair")
    print(f"  in-process single-attribute drop vs the job's importance: max |diff| {check:.2e}")
    scored_items = orders.groupby(ITEM_KEYS).ngroups
    pairs = scored_items + len(orders)
    print(
        f"  {scored_items} items with attributes; {pairs} pairs scored = {pairs / scored_items:.2f} per item"
    )


if __name__ == "__main__":
    sys.exit(main())
