"""Request contexts: a shopper's recent items and preference profile, or a query, as text."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from llmrank_spark.config import RerankConfig
from llmrank_spark.events import events_until
from llmrank_spark.text.clean import clean_text
from llmrank_spark.text.items import ITEM_FIELDS, _fill, field_value, render_item_texts, shown_attributes

# Context of a user with no history at all: the model still gets a fluent, honest first segment.
NEW_SHOPPER_CONTEXT = "new shopper with no history yet"
# Placed before a user's history so a cross-encoder can tell the context segment from a query.
HISTORY_PREFIX = "Recently viewed: "
HISTORY_SEPARATOR = "; "
# Placed before a user's preference profile (`rerank.profile_categories`), which comes before their history.
PROFILE_PREFIX = "Usually chooses: "
# A value enters the profile only when the user engaged with at least this many items that have it: one
# item is an item, not a preference.
MIN_PROFILE_SUPPORT = 2
# Between the parts of a user's context: their text (`rerank.user_template`), profile and recent items.
CONTEXT_PART_SEPARATOR = ". "


def user_text_frame(users: pd.DataFrame, template: str) -> pd.DataFrame:
    """(request_id, user_text) per row of the users table: `template` filled from its fields (any column
    but user_id, e.g. "{segment} shopper, {age}"); a missing value reads "unknown"."""
    fields = [column for column in users.columns if column != "user_id"]
    texts = [
        _fill(template, {field: field_value(row[field]) for field in fields}, "users")
        for row in users.to_dict("records")
    ]
    return pd.DataFrame(
        {"request_id": users["user_id"].to_numpy(), "user_text": pd.Series(texts, dtype=object)}
    )


def contexts_with_user_texts(frame: pd.DataFrame) -> pd.DataFrame:
    """(request_id, context_text) from rows (request_id, user_text, context_text), either text null: the
    user's text, then their history context, or `NEW_SHOPPER_CONTEXT` when they have none."""
    history = frame["context_text"].where(frame["context_text"].notna(), NEW_SHOPPER_CONTEXT)
    stated = frame["user_text"].notna() & frame["user_text"].astype(str).ne("")
    context = (frame["user_text"].astype(str) + CONTEXT_PART_SEPARATOR + history).where(stated, history)
    return pd.DataFrame({"request_id": frame["request_id"].to_numpy(), "context_text": context.to_numpy()})


def history_context(snippets: list[str], profile: str = "") -> str:
    """A user's context: their preference profile, then item snippets newest first; the documented
    fallback when there is neither."""
    parts = [PROFILE_PREFIX + profile] if profile else []
    if snippets:
        parts.append(HISTORY_PREFIX + HISTORY_SEPARATOR.join(snippets))
    return CONTEXT_PART_SEPARATOR.join(parts) or NEW_SHOPPER_CONTEXT


def preferred_values(engaged: pd.DataFrame, categories: int, attribute_limit: int) -> pd.DataFrame:
    """(user_id, category, attribute, value) that `preference_profiles` states, in its order, from rows
    (user_id, item_id, category, brand, attributes), one per item the user engaged with: for each of
    their `categories` categories with the most items, the value of each attribute (brand, then those an
    item text shows) they chose most often, when at least `MIN_PROFILE_SUPPORT` items have it. Ties go
    to the category or value first by name."""
    values = pd.DataFrame(
        [
            (row.user_id, row.category, name, value)
            for row in engaged.itertuples(index=False)
            for name, value in [
                ("brand", clean_text(row.brand)),
                *shown_attributes(row.attributes, attribute_limit),
            ]
            if value
        ],
        columns=["user_id", "category", "attribute", "value"],
    )
    counts = values.value_counts().rename("items").reset_index()
    modes = counts[counts["items"] >= MIN_PROFILE_SUPPORT].sort_values(
        ["user_id", "category", "attribute", "items", "value"], ascending=[True, True, True, False, True]
    )
    modes = modes.drop_duplicates(["user_id", "category", "attribute"])
    top = (
        engaged.groupby(["user_id", "category"])
        .size()
        .rename("category_items")
        .reset_index()
        .sort_values(["user_id", "category_items", "category"], ascending=[True, False, True])
        .groupby("user_id")
        .head(categories)
    )
    stated = top.merge(modes, on=["user_id", "category"], sort=False)
    stated = stated.assign(brand_last=stated["attribute"].ne("brand")).sort_values(
        ["user_id", "category_items", "category", "brand_last", "attribute"],
        ascending=[True, False, True, True, True],
    )
    return stated[["user_id", "category", "attribute", "value"]].reset_index(drop=True)


def preference_profiles(engaged: pd.DataFrame, categories: int, attribute_limit: int) -> pd.Series:
    """Profile text per user_id of their `preferred_values`, in the item text's "name: value" words:
    "hiking boots: brand: Ridgeline, colour: brown; t-shirts: ...".

    Why: a shopper's taste in a category (a colour, a fit, a brand) shows in what they chose repeatedly,
    which a few recent items rarely state; said in the item text's own words, the model can relate it
    to a candidate directly.
    """
    stated = preferred_values(engaged, categories, attribute_limit)
    stated["pair"] = stated["attribute"] + ": " + stated["value"]
    per_category = stated.groupby(["user_id", "category"], sort=False)["pair"].agg(", ".join)
    texts = per_category.index.get_level_values("category") + ": " + per_category
    return texts.groupby(level="user_id", sort=False).agg(HISTORY_SEPARATOR.join)


def user_context_frame(history: pd.DataFrame, cfg: RerankConfig) -> pd.DataFrame:
    """(request_id, context_text) from history rows (user_id, item_id, event_ts and the item fields).

    Each item counts once, at its latest event; the `cfg.context_items` newest items are kept, newest
    first, ties on time broken by item_id so the text never depends on row order. With
    `cfg.profile_categories`, the user's `preference_profiles` over all their items comes first.
    """
    if history.empty:
        return pd.DataFrame({"request_id": pd.Series(dtype=object), "context_text": pd.Series(dtype=object)})
    engaged = history.sort_values(["user_id", "event_ts", "item_id"], ascending=[True, False, True])
    engaged = engaged.drop_duplicates(["user_id", "item_id"])
    latest = engaged.groupby("user_id", sort=True).head(cfg.context_items)
    latest = latest.assign(snippet=render_item_texts(latest, cfg.context_template, cfg.item_attributes))
    snippets = latest.groupby("user_id", sort=True)["snippet"].agg(list)
    contexts = pd.DataFrame({"request_id": history["user_id"].drop_duplicates().sort_values()})
    profiles = (
        preference_profiles(engaged, cfg.profile_categories, cfg.item_attributes)
        if cfg.profile_categories
        else pd.Series(dtype=object)
    )
    contexts["context_text"] = [
        history_context(snippets.get(user, []), profiles.get(user, "")) for user in contexts["request_id"]
    ]
    return contexts.reset_index(drop=True)


def user_history(interactions: DataFrame, items: DataFrame, as_of: dt.date | None = None) -> DataFrame:
    """(user_id, item_id, event_ts, item fields): each item a user engaged with, once, at its latest
    event up to the end of `as_of` (all events without it): what a user's context is built from."""
    if as_of is not None:
        interactions = events_until(interactions, as_of)
    latest = interactions.groupBy("user_id", "item_id").agg(F.max("event_ts").alias("event_ts"))
    item_columns = [c for c in (*ITEM_FIELDS, "attributes") if c in items.columns]
    return latest.join(items.select(*item_columns), "item_id")


def user_contexts(
    interactions: DataFrame,
    items: DataFrame,
    cfg: RerankConfig,
    as_of: dt.date | None = None,
    users: DataFrame | None = None,
) -> DataFrame:
    """(request_id, context_text) for every user in `interactions`: their newest items, newest first.

    With `as_of`, only events up to the end of that day count, so re-running a past date sees the same
    history it saw then. With `cfg.user_template` and a `users` table, every user of either gets the
    context `contexts_with_user_texts` builds. Users absent from both have no context: callers give
    them `NEW_SHOPPER_CONTEXT`.
    """
    history = user_history(interactions, items, as_of)
    schema = "request_id string, context_text string"
    contexts = history.groupBy("user_id").applyInPandas(lambda pdf: user_context_frame(pdf, cfg), schema)
    if not cfg.user_template or users is None:
        return contexts

    def render(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield user_text_frame(batch, cfg.user_template)

    def combine(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield contexts_with_user_texts(batch)

    user_texts = users.mapInPandas(render, "request_id string, user_text string")
    return user_texts.join(contexts, "request_id", "full").mapInPandas(combine, schema)
