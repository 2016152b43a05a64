"""Attribute importance from behaviour: what a context chose, against what its category offered.

A context is a request: a shopper (the items they acted on outside search sessions) or a search query
(its graded `query_labels` and the items of its search sessions). For a context, a category and an
attribute of the category's items:

1. The preferred value is the value whose share of the context's choices most exceeds its market share
   (the share the category's shoppers give it), the context's own choices shrunk toward its segment's by
   `attributes.prior_events` choices.
2. Each choice is held out in turn and compared with the preferred value of the *other* choices:
   `matched` counts the hits, `expected` what a context with no preference would hit (the market share of
   the value predicted). Held out, a value that only looks preferred by chance matches no more often than
   chance, so an attribute with 3 values and one with 30 are measured alike.
3. importance = logit(matched / choices) - logit(expected / choices), each rate shrunk by
   `attributes.shrink_events` choices toward the context's segment (a user segment or a query class),
   whose rates are shrunk the same way toward the category's.

Where a shopper picks an item with probability proportional to exp(base + w * [value = preferred]), the
rate of step 3 is the log-odds ratio of choosing the preferred value, which is w once the preferred value
is right: the importance estimates the weight of the attribute in the context's choices, in the same units
for every attribute. docs/attributes.md says why this estimator and where it falls short.

`preference_statistics` is the pure estimator over a context's choices (pandas, tested without Spark);
the rest is the Spark layer: joins and aggregations, with the estimator applied per request.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from llmrank_spark.config import AttributesConfig
from llmrank_spark.events import events_until
from llmrank_spark.explain.orders import ITEM_KEYS, REQUEST_KEYS, ddl, segment_labels
from llmrank_spark.lakehouse import checkpointed, conform, request_batch
from llmrank_spark.text import MISSING_VALUE

BEHAVIOUR = "behaviour"  # the tables' `source`: the context's own choices, shrunk toward its segment
SEGMENT = "segment"  # no choices of the context in the category: its segment's (or query class's) estimate
CATEGORY = "category"  # no choices of its segment either: the category's
NO_BEHAVIOUR = "none"  # nobody chose in the category: importance 0
MODEL = "model"  # no choices of the context in the category: the attribute model's, from its text
CONTEXT_KEYS = ["request_type", "request_id", "category", "attribute"]
GROUP_KEYS = ["request_type", "segment_type", "segment", "category", "attribute"]
STATISTICS = {
    "request_type": "string",
    "request_id": "string",
    "category": "string",
    "attribute": "string",
    "matched": "double",
    "expected": "double",
    "choices": "double",
    "preferred_value": "string",
}
# How many choices' worth of the catalogue's value shares the market shares start from, so a value no
# shopper chose yet keeps a share in proportion to its items (a category nobody chose in: the catalogue's).
MARKET_PRIOR_CHOICES = 1.0
# Rates are kept this far from 0 and 1 before the logit: a context that always hit stays finite.
RATE_FLOOR = 1e-4


def preference_statistics(choices: pd.DataFrame, offered: pd.DataFrame, prior_events: float) -> pd.DataFrame:
    """Held-out preference hits per (request_type, request_id, category, attribute): STATISTICS columns.

    `choices`: CONTEXT_KEYS, item_id, value, weight: one row per chosen item and attribute of it.
    `offered`: CONTEXT_KEYS, value, market_share, segment_weight, segment_total: every value the category
    offers for the context's attributes, its market share, and the choice weight the context's segment
    (this context included) gave it and the attribute.
    """
    counts = choices.groupby([*CONTEXT_KEYS, "value"], as_index=False)["weight"].sum()
    values = offered.merge(counts.rename(columns={"weight": "own"}), on=[*CONTEXT_KEYS, "value"], how="left")
    values["own"] = values["own"].fillna(0.0)
    values["total"] = values.groupby(CONTEXT_KEYS)["own"].transform("sum")
    values = values[values["total"] > 0]
    # The segment's shares without this context's own choices: no choice may be its own prior.
    others = values["segment_total"] - values["total"]
    segment_share = (values["segment_weight"] - values["own"]) / others.where(others > 0)
    values = values.assign(
        shrunk=values["own"] + prior_events * segment_share.fillna(values["market_share"]),
        shrunk_total=values["total"] + prior_events,
    )
    excess = values["shrunk"] / values["shrunk_total"] - values["market_share"]
    preferred = (
        values.assign(excess=excess)
        .sort_values([*CONTEXT_KEYS, "excess", "value"], ascending=[True] * 4 + [False, True])
        .drop_duplicates(CONTEXT_KEYS)[[*CONTEXT_KEYS, "value"]]
        .rename(columns={"value": "preferred_value"})
    )

    held_out = choices.rename(columns={"value": "chosen"}).merge(
        values[[*CONTEXT_KEYS, "value", "shrunk", "shrunk_total", "market_share"]], on=CONTEXT_KEYS
    )
    is_chosen = held_out["value"] == held_out["chosen"]
    rest = held_out["shrunk_total"] - held_out["weight"]
    held_out = held_out.assign(
        is_chosen=is_chosen,
        excess=(held_out["shrunk"] - held_out["weight"] * is_chosen) / rest.where(rest > 0)
        - held_out["market_share"],
    ).dropna(subset=["excess"])  # a lone choice with no prior predicts nothing
    choice = [*CONTEXT_KEYS, "item_id"]
    best = held_out.groupby(choice)["excess"].transform("max")
    predicted = held_out[np.isclose(held_out["excess"], best, rtol=0.0, atol=1e-12)]
    # Tied values share the prediction: each is predicted with probability 1 / (number tied).
    share = predicted["weight"] / predicted.groupby(choice)["excess"].transform("size")
    hits = predicted.assign(
        matched=share * predicted["is_chosen"], expected=share * predicted["market_share"], choices=share
    )
    totals = hits.groupby(CONTEXT_KEYS, as_index=False)[["matched", "expected", "choices"]].sum()
    out = preferred.merge(totals, on=CONTEXT_KEYS, how="left").fillna(
        {"matched": 0.0, "expected": 0.0, "choices": 0.0}
    )
    return out[list(STATISTICS)].reset_index(drop=True)


def attribute_values(items: DataFrame, item_fields: Sequence[str]) -> DataFrame:
    """(item_id, category, attribute, value): each item's values of the `item_fields` and attributes map.

    An item field wins over an attributes-map entry of the same name; empty values are no values.
    """
    category = F.coalesce(F.col("category").cast("string"), F.lit(MISSING_VALUE)).alias("category")
    parts = [
        items.select(
            "item_id",
            category,
            F.lit(name).alias("attribute"),
            F.col(name).cast("string").alias("value"),
            F.lit(0).alias("priority"),
        )
        for name in item_fields
        if name in items.columns
    ]
    if "attributes" in items.columns:
        parts.append(
            items.select(
                "item_id", category, F.explode("attributes").alias("attribute", "value"), F.lit(1)
            ).toDF("item_id", "category", "attribute", "value", "priority")
        )
    if not parts:
        schema = "item_id string, category string, attribute string, value string"
        return items.sparkSession.createDataFrame([], schema)
    values = parts[0]
    for part in parts[1:]:
        values = values.unionByName(part)
    return (
        values.where(F.col("value").isNotNull() & (F.trim("value") != ""))
        .groupBy("item_id", "category", "attribute")
        .agg(F.min_by("value", "priority").alias("value"))
    )


def behaviour_choices(
    interactions: DataFrame, run_date: dt.date, query_labels: DataFrame | None = None
) -> DataFrame:
    """(request_type, request_id, item_id, weight): what each context chose, up to the end of run_date.

    A shopper chose the items they acted on outside search sessions (weight 1 each, however many events);
    a query, the items of its search sessions (1 each) and its judged items (the NDCG gain 2^grade - 1).
    """
    events = events_until(interactions, run_date)
    searched = F.col("query_id").isNotNull() if "query_id" in events.columns else F.lit(False)
    parts = [
        events.where(~searched)
        .select(
            F.lit("user").alias("request_type"),
            F.col("user_id").alias("request_id"),
            "item_id",
            F.lit(1.0).alias("weight"),
        )
        .distinct()
    ]
    if "query_id" in events.columns:
        parts.append(
            events.where(searched)
            .select(
                F.lit("query").alias("request_type"),
                F.col("query_id").alias("request_id"),
                "item_id",
                F.lit(1.0).alias("weight"),
            )
            .distinct()
        )
    if query_labels is not None:
        parts.append(
            query_labels.where(F.col("relevance") > 0).select(
                F.lit("query").alias("request_type"),
                F.col("query_id").alias("request_id"),
                "item_id",
                (F.pow(F.lit(2.0), F.col("relevance")) - 1.0).alias("weight"),
            )
        )
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    return union.groupBy("request_type", "request_id", "item_id").agg(F.sum("weight").alias("weight"))


def market_shares(values: DataFrame, chosen: DataFrame) -> DataFrame:
    """(category, attribute, value, market_share): the share of the category's shoppers' choices with the
    value, started from MARKET_PRIOR_CHOICES choices spread as the catalogue's items are."""
    per_attribute = Window.partitionBy("category", "attribute")
    catalogue = values.groupBy("category", "attribute", "value").agg(F.count(F.lit(1)).alias("items"))
    shopper_choices = (
        chosen.where(F.col("request_type") == "user")
        .groupBy("category", "attribute", "value")
        .agg(F.sum("weight").alias("chosen"))
    )
    shares = catalogue.join(shopper_choices, ["category", "attribute", "value"], "left")
    shares = shares.fillna(0.0, ["chosen"])
    catalogue_share = F.col("items") / F.sum("items").over(per_attribute)
    return shares.select(
        "category",
        "attribute",
        "value",
        (
            (F.col("chosen") + F.lit(MARKET_PRIOR_CHOICES) * catalogue_share)
            / (F.sum("chosen").over(per_attribute) + F.lit(MARKET_PRIOR_CHOICES))
        ).alias("market_share"),
    )


def _logit(rate: Column) -> Column:
    clipped = F.least(F.greatest(rate, F.lit(RATE_FLOOR)), F.lit(1.0 - RATE_FLOOR))
    return F.log(clipped / (F.lit(1.0) - clipped))


def _importance(matched: Column, expected: Column) -> Column:
    """logit(matched rate) - logit(expected rate): the importance, at every level."""
    return (_logit(matched) - _logit(expected)).alias("importance")


def _shrunk(total: str, prior_rate: str, shrink_events: float) -> Column:
    """(total + k * prior rate) / (choices + k): a rate with k choices' worth of its prior's."""
    k = F.lit(shrink_events)
    return (F.col(total) + k * F.col(prior_rate)) / (F.col("choices") + k)


@dataclass(frozen=True)
class BehaviourImportance:
    """The estimate at its three levels, each (…, attribute, importance, preferred_value, choices).

    All three derive from `statistics`, the per-context held-out counts: persist it to compute them once.
    """

    statistics: DataFrame
    contexts: DataFrame  # CONTEXT_KEYS + segment_type, segment: requests with choices in the category
    segments: DataFrame  # GROUP_KEYS + contexts (how many requests with choices)
    categories: DataFrame  # request_type, category, attribute


def behaviour_importance(
    items: DataFrame,
    interactions: DataFrame,
    cfg: AttributesConfig,
    run_date: dt.date,
    users: DataFrame | None = None,
    queries: DataFrame | None = None,
    query_labels: DataFrame | None = None,
) -> BehaviourImportance:
    """Every context's, segment's and category's attribute importance, from choices up to run_date."""
    values = attribute_values(items, cfg.item_fields)
    chosen = behaviour_choices(interactions, run_date, query_labels).join(values, "item_id")
    labels = segment_labels(chosen, users, queries)
    # Every level below reads the choices several times: computed once, without the joins behind them.
    chosen = checkpointed(chosen.join(labels, REQUEST_KEYS))
    market = market_shares(values, chosen)
    group_values = chosen.groupBy(*GROUP_KEYS, "value").agg(F.sum("weight").alias("segment_weight"))
    group_totals = group_values.groupBy(*GROUP_KEYS).agg(F.sum("segment_weight").alias("segment_total"))
    offered = (
        chosen.select(*CONTEXT_KEYS, "segment_type", "segment")
        .distinct()
        .join(market, ["category", "attribute"])
        .join(group_values, [*GROUP_KEYS, "value"], "left")
        .join(group_totals, GROUP_KEYS, "left")
        .fillna(0.0, ["segment_weight", "segment_total"])
    )
    prior_events = cfg.prior_events

    def estimate(choices: pd.DataFrame, offers: pd.DataFrame) -> pd.DataFrame:
        return preference_statistics(choices, offers, prior_events)

    # The estimator is vectorised over contexts, so each call gets a batch of whole contexts.
    requests = chosen.select(*REQUEST_KEYS).distinct().count()
    bucket = request_batch(requests, REQUEST_KEYS).alias("bucket")
    # Both sides come from `chosen`: selecting the columns anew gives them new identities, which the
    # cogroup needs to tell the sides apart.
    choices = chosen.select(bucket, *CONTEXT_KEYS, "item_id", "value", "weight")
    offers = offered.select(bucket, *offered.columns)
    statistics = (
        choices.toDF(*choices.columns)
        .groupBy("bucket")
        .cogroup(offers.toDF(*offers.columns).groupBy("bucket"))
        .applyInPandas(estimate, ddl(STATISTICS))
        .join(labels, REQUEST_KEYS)
    )
    rates = [F.sum(name).alias(name) for name in ("matched", "expected", "choices")]
    categories = (
        statistics.groupBy("request_type", "category", "attribute")
        .agg(*rates)
        .where(F.col("choices") > 0)
        .select(
            "request_type",
            "category",
            "attribute",
            "choices",
            (F.col("matched") / F.col("choices")).alias("category_matched"),
            (F.col("expected") / F.col("choices")).alias("category_expected"),
        )
    )
    segments = (
        statistics.groupBy(*GROUP_KEYS)
        .agg(*rates, F.count_if(F.col("choices") > 0).alias("contexts"))
        .where(F.col("choices") > 0)
        .join(categories.drop("choices"), ["request_type", "category", "attribute"])
        .select(
            *GROUP_KEYS,
            "choices",
            "contexts",
            _shrunk("matched", "category_matched", cfg.shrink_events).alias("segment_matched"),
            _shrunk("expected", "category_expected", cfg.shrink_events).alias("segment_expected"),
        )
    )
    contexts = (
        statistics.where(F.col("choices") > 0)
        .join(segments.drop("choices", "contexts"), GROUP_KEYS)
        .select(
            *CONTEXT_KEYS,
            "segment_type",
            "segment",
            "choices",
            "preferred_value",
            _importance(
                _shrunk("matched", "segment_matched", cfg.shrink_events),
                _shrunk("expected", "segment_expected", cfg.shrink_events),
            ),
        )
    )
    # A group's preferred value: the one whose share of the group's choices most exceeds its market share
    # (ties: the first by name, so that every run picks the same).
    excess = F.col("segment_weight") / F.col("segment_total") - F.col("market_share")
    first = Window.partitionBy(*GROUP_KEYS).orderBy(excess.desc(), "value")
    group_preferred = (
        group_values.join(group_totals, GROUP_KEYS)
        .join(market, ["category", "attribute", "value"])
        .withColumn("order", F.row_number().over(first))
        .where(F.col("order") == 1)
        .select(*GROUP_KEYS, F.col("value").alias("preferred_value"))
    )
    return BehaviourImportance(
        statistics=statistics,
        contexts=contexts,
        segments=segments.join(group_preferred, GROUP_KEYS, "left").select(
            *GROUP_KEYS,
            "choices",
            "contexts",
            "preferred_value",
            _importance(F.col("segment_matched"), F.col("segment_expected")),
        ),
        categories=categories.select(
            "request_type",
            "category",
            "attribute",
            "choices",
            _importance(F.col("category_matched"), F.col("category_expected")),
        ),
    )


def behaviour_orders(
    ranked: DataFrame,
    items: DataFrame,
    importance: BehaviourImportance,
    cfg: AttributesConfig,
    run_date: dt.date,
    users: DataFrame | None = None,
    queries: DataFrame | None = None,
    model: DataFrame | None = None,
    model_version: str | None = None,
) -> DataFrame:
    """The `attribute_order` table: each top-ranked item's attributes, by the request's importance.

    The request's own estimate where it chose in the item's category, else the attribute model's
    (`model`: CONTEXT_KEYS, importance, from `attribute_model.py`, version `model_version`), else its
    segment's, else the category's; `source` says which.
    """
    top = ranked.where(F.col("rank") <= cfg.top_k_items).select(*ITEM_KEYS)
    rows = (
        top.join(attribute_values(items, cfg.item_fields), "item_id")
        .join(segment_labels(top, users, queries), REQUEST_KEYS)
        .join(
            importance.contexts.select(
                *CONTEXT_KEYS,
                F.col("importance").alias("own_importance"),
                F.col("preferred_value").alias("own_preferred"),
            ),
            CONTEXT_KEYS,
            "left",
        )
        .join(
            importance.segments.select(
                *GROUP_KEYS,
                F.col("importance").alias("segment_importance"),
                F.col("preferred_value").alias("segment_preferred"),
            ),
            GROUP_KEYS,
            "left",
        )
        .join(
            importance.categories.select(
                "request_type", "category", "attribute", F.col("importance").alias("category_importance")
            ),
            ["request_type", "category", "attribute"],
            "left",
        )
    )
    if model is None:
        rows = rows.withColumn("model_importance", F.lit(None).cast("double"))
    else:
        rows = rows.join(
            model.select(*CONTEXT_KEYS, F.col("importance").alias("model_importance")), CONTEXT_KEYS, "left"
        )
    source = (
        F.when(F.col("own_importance").isNotNull(), F.lit(BEHAVIOUR))
        .when(F.col("model_importance").isNotNull(), F.lit(MODEL))
        .when(F.col("segment_importance").isNotNull(), F.lit(SEGMENT))
        .when(F.col("category_importance").isNotNull(), F.lit(CATEGORY))
        .otherwise(F.lit(NO_BEHAVIOUR))
    )
    preferred = F.coalesce("own_preferred", "segment_preferred")
    per_item = Window.partitionBy(*ITEM_KEYS).orderBy(F.desc("importance"), "attribute")
    orders = rows.select(
        *ITEM_KEYS,
        "attribute",
        "value",
        F.coalesce(
            "own_importance", "model_importance", "segment_importance", "category_importance", F.lit(0.0)
        ).alias("importance"),
        source.alias("source"),
        F.when(source == F.lit(MODEL), F.lit(model_version).cast("string")).alias("model_version"),
        preferred.alias("preferred_value"),
        (F.col("value") == preferred).alias("matches_preference"),
    ).withColumn("rank", F.row_number().over(per_item))
    return conform(orders.withColumn("run_date", F.lit(run_date)), "attribute_order")


def behaviour_by_segment(importance: BehaviourImportance, run_date: dt.date) -> DataFrame:
    """The `attribute_order_by_segment` table: every segment's (and query class's) estimate per category."""
    per_group = Window.partitionBy("segment_type", "segment", "category").orderBy(
        F.desc("mean_importance"), "attribute"
    )
    segments = importance.segments.select(
        "segment_type",
        "segment",
        "category",
        "attribute",
        F.col("importance").alias("mean_importance"),
        F.col("contexts").cast("bigint").alias("support"),
        "preferred_value",
        F.lit(BEHAVIOUR).alias("source"),
    ).withColumn("rank", F.row_number().over(per_group))
    return conform(segments.withColumn("run_date", F.lit(run_date)), "attribute_order_by_segment")
