"""Attribute order by occlusion: which of a ranked item's attributes the reranker's score owes most to.

This explains the ranker (`attributes.method: occlusion`); what matters to the shopper, from what they
chose, is `behaviour.py`.

The importance of attribute a (name: value) of item i for request r is

    score(r, text of i) - score(r, text of i without a)

with the reranker that ranked the list: how much the model's score of the item for this request owes to
the item stating that attribute, everything else in the text fixed. "Without a" means the item text
rendered from the same template with a's entry dropped from the attributes shown (or, for an item field
such as brand, the field read as unknown) and a's value deleted wherever the item's other fields state
it (sample titles repeat brand, material, colour): removing one of two mentions would leave the model
reading the value anyway. docs/attributes.md says why occlusion, what it costs and where it falls short.

The pure functions (attributes of an item, occluded items, variant texts, ordering, ranking) work on
pandas frames and are unit-tested without Spark; `attribute_orders` is the Spark layer: the variants go
through the rerank job's scoring UDF as extra rows, batched with their request's other pairs.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import AttributesConfig, RerankConfig
from llmrank_spark.explain.orders import (
    ITEM_KEYS,
    ORDER_COLUMNS,
    REQUEST_KEYS,
    SEGMENT_COLUMNS,
    SEGMENT_KEYS,
    ddl,
    rank_attributes,
    segment_labels,
)
from llmrank_spark.lakehouse import ContractError, conform
from llmrank_spark.rerank import (
    ModelSpec,
    ScoringSettings,
    model_for,
    read_manifest,
    score_by_request,
    scoring_udf,
    ship_model,
    with_contexts,
)
from llmrank_spark.text import ITEM_FIELDS, MISSING_VALUE, render_item_texts, shown_attributes

OCCLUSION = "occlusion"  # the tables' `source` of an occlusion importance
# Item fields whose text may state another attribute's value, and so lose it when that one is removed.
TEXT_FIELDS = [field for field in ITEM_FIELDS if field not in ("item_id", "price")]


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def item_attributes(
    item: Mapping[str, Any], rerank: RerankConfig, cfg: AttributesConfig
) -> list[tuple[str, str]]:
    """The (name, value) pairs scored for an item: what its text shows, item fields first, at most M.

    An attribute the item text does not show cannot move the score, so it is not scored: the fields of
    `cfg.item_fields` the item template names (when the item has a value), then the attributes the
    template's {attributes} shows, by name.
    """
    named = _template_fields(rerank.item_template)
    chosen: dict[str, str] = {
        field: str(item[field])
        for field in cfg.item_fields
        if field in named and pd.notna(item.get(field)) and str(item[field]).strip()
    }
    if "attributes" in named:
        for name, value in shown_attributes(item.get("attributes"), rerank.item_attributes):
            chosen.setdefault(name, value)
    return list(chosen.items())[: cfg.max_attributes]


def _mention(value: str) -> re.Pattern:
    """The value as a whole word or phrase, any case: "Leather" in a title states material: leather."""
    return re.compile(rf"(?<!\w){re.escape(value)}(?!\w)", re.IGNORECASE)


def _without_mentions(text: Any, values: Collection[str]) -> Any:
    """The text with every mention of `values` deleted, and the punctuation a deletion leaves dangling."""
    if not isinstance(text, str):
        return text
    for value in values:
        text = _mention(value).sub("", text)
    text = re.sub(r"\s+([,.;:])", r"\1", text)  # "Boots , Brown" -> "Boots, Brown"
    text = re.sub(r"[,;](?=\s*(?:[,.;]|$))", "", text)  # "Boots, ." -> "Boots."
    return text.strip()


def occluded_item(
    item: Mapping[str, Any], removed: Collection[str], rerank: RerankConfig, cfg: AttributesConfig
) -> dict[str, Any]:
    """The item row whose rendered text is the item's text without the attributes named in `removed`.

    The attributes map is cut to what the text shows before any is removed, so removing one never lets
    an attribute past the `rerank.item_attributes` cut into the text: only the removed ones change.
    """
    scored = dict(item_attributes(item, rerank, cfg))
    values = [scored[name] for name in removed if name in scored]
    occluded = dict(item)
    for field in TEXT_FIELDS:
        if field in occluded:
            occluded[field] = None if field in removed else _without_mentions(occluded[field], values)
    if "price" in removed:
        occluded["price"] = None
    occluded["attributes"] = {
        name: value
        for name, value in shown_attributes(item.get("attributes"), rerank.item_attributes)
        if name not in removed
    }
    return occluded


def occlusion_variants(items: pd.DataFrame, rerank: RerankConfig, cfg: AttributesConfig) -> pd.DataFrame:
    """(item_id, attribute, value, item_text): each item's full text (attribute null), then one text per
    scored attribute removed. Items with no attribute to score yield no rows: they get no order."""
    rows = []
    for item in items.to_dict("records"):
        attributes = item_attributes(item, rerank, cfg)
        if attributes:
            rows.append({**item, "attribute": None, "value": None})
        for name, value in attributes:
            rows.append({**occluded_item(item, [name], rerank, cfg), "attribute": name, "value": value})
    columns = ["item_id", "attribute", "value", "item_text"]
    if not rows:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in columns})
    variants = pd.DataFrame(rows)
    variants["item_text"] = render_item_texts(variants, rerank.item_template, rerank.item_attributes)
    return variants[columns].reset_index(drop=True)


def order_attributes(scored: pd.DataFrame) -> pd.DataFrame:
    """Attribute orders from scored variants (ITEM_KEYS, attribute, value, score; attribute null = full
    text): importance = full score - score without the attribute, ranked per request and item."""
    is_full = scored["attribute"].isna()
    full = scored.loc[is_full, [*ITEM_KEYS, "score"]].rename(columns={"score": "full_score"})
    variants = scored.loc[~is_full].merge(full, on=ITEM_KEYS, validate="many_to_one")
    variants = variants.assign(importance=variants["full_score"] - variants["score"])
    return rank_attributes(variants, ITEM_KEYS, "importance")[list(ORDER_COLUMNS)]


def orders_by_segment(
    orders: DataFrame, items: DataFrame, users: DataFrame | None, queries: DataFrame | None
) -> DataFrame:
    """The `attribute_order_by_segment` table from `attribute_order` rows: per category and segment (or
    query class), each attribute's mean importance over the rows that have it, and their count.

    Means and counts are a Spark aggregation (partial sums, so a segment may hold any number of rows);
    only the small per-group result is ranked in pandas.
    """
    rows = orders.join(segment_labels(orders, users, queries), REQUEST_KEYS).join(
        items.select("item_id", F.coalesce("category", F.lit(MISSING_VALUE)).alias("category")), "item_id"
    )
    groups = ["run_date", "model_version", *SEGMENT_KEYS]
    means = rows.groupBy(*groups, "attribute").agg(
        F.avg("importance").alias("mean_importance"), F.count(F.lit(1)).alias("support")
    )
    schema = {"run_date": "date", "model_version": "string", **SEGMENT_COLUMNS}
    ranked = means.groupBy(*groups).applyInPandas(
        lambda group: rank_attributes(group, groups, "mean_importance")[list(schema)], ddl(schema)
    )
    return conform(ranked.withColumn("source", F.lit(OCCLUSION)), "attribute_order_by_segment")


def served_score_scale(spec: ModelSpec) -> float:
    """What a drop in the text model's score is worth in the served score.

    With a fusion head the served score is w_logit * logit + (retrieval terms the text cannot change), so
    a drop in the served score is w_logit times the drop in the logit; without one, the score is served.
    """
    head = read_manifest(spec.path).fusion_head if spec.kind == "cross_encoder" else None
    return head.logit_weight if head is not None else 1.0


def attribute_orders(
    spark: SparkSession,
    ranked: DataFrame,
    items: DataFrame,
    interactions: DataFrame,
    rerank: RerankConfig,
    cfg: AttributesConfig,
    run_date: dt.date,
    queries: DataFrame | None = None,
    users: DataFrame | None = None,
) -> DataFrame:
    """The `attribute_order` table for one run's `ranked` partition.

    Scores (request, variant) pairs with the model `rerank` serves, through the rerank job's broadcast
    model and pandas UDF: per ranked item, 1 + (its scored attributes, at most `cfg.max_attributes`)
    pairs, for each request's top `cfg.top_k_items` items. Fails, naming both versions, when the ranked
    partition was scored by another model than the one `rerank` serves now.
    """
    spec, rerank = model_for(rerank)
    served_version = spec.version
    if spec.kind == "retrieval":
        # No model ranked these lists: the occlusion reads the text relevance of the zero-shot MiniLM,
        # and its model_version says so.
        spec, rerank = model_for(rerank.model_copy(update={"mode": "zero_shot_bi_encoder"}))
    served_by = [row.model_version for row in ranked.select("model_version").distinct().collect()]
    if any(version != served_version for version in served_by):
        raise ContractError(
            f"table 'ranked' for run_date {run_date} was scored by {sorted(map(str, served_by))} but the "
            f"rerank config now serves '{served_version}'; re-run `llmrank rerank` for that date first, so "
            f"the attribute orders explain the ranking that was published"
        )
    top = ranked.where(F.col("rank") <= cfg.top_k_items).select(*ITEM_KEYS)
    missing = top.join(items, "item_id", "left_anti").select("item_id").limit(1).collect()
    if missing:
        raise ContractError(
            f"ranked item '{missing[0].item_id}' is not in the items table; re-run `llmrank rerank` "
            f"against the current catalogue"
        )

    def variants(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield occlusion_variants(batch, rerank, cfg)

    item_columns = [c for c in (*ITEM_FIELDS, "attributes") if c in items.columns]
    texts = (
        items.select(*item_columns)
        .join(top.select("item_id").distinct(), "item_id", "left_semi")
        .mapInPandas(variants, "item_id string, attribute string, value string, item_text string")
    )
    pairs = with_contexts(top, interactions, items, rerank, run_date, queries, users).join(texts, "item_id")
    score = scoring_udf(ship_model(spark, spec), ScoringSettings.from_config(rerank))
    scale = served_score_scale(spec)
    scored = score_by_request(pairs, score, "item_id", "attribute").select(
        *ITEM_KEYS, "attribute", "value", (F.col("score") * F.lit(scale)).alias("score")
    )
    orders = (
        scored.groupBy(*REQUEST_KEYS)
        .applyInPandas(order_attributes, ddl(ORDER_COLUMNS))
        .withColumn("model_version", F.lit(spec.version))
        .withColumn("source", F.lit(OCCLUSION))
        .withColumn("run_date", F.lit(run_date))
    )
    return conform(orders, "attribute_order")
