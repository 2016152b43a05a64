"""Item texts: the template filled from the catalogue's fields and attributes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame

from llmrank_spark.config import RerankConfig
from llmrank_spark.text.clean import _SPACES, MISSING_VALUE, clean_text

# Item fields a template may name besides {attributes}.
ITEM_FIELDS = ("item_id", "title", "category", "brand", "description", "price")


def _attribute_pairs(attributes: Any) -> list[tuple[str, str]]:
    """A map column arrives from Arrow as a dict or as a list of (key, value) pairs, depending on the path."""
    if attributes is None or (isinstance(attributes, float) and pd.isna(attributes)):
        return []
    pairs = attributes.items() if isinstance(attributes, Mapping) else attributes
    cleaned = ((clean_text(k), clean_text(v)) for k, v in pairs)
    return [(k, v) for k, v in cleaned if k and v]


def shown_attributes(attributes: Any, limit: int) -> list[tuple[str, str]]:
    """The (name, value) pairs an item text shows: the first `limit` by name, stable so texts reproduce."""
    return sorted(_attribute_pairs(attributes))[:limit]


def format_attributes(attributes: Any, limit: int) -> str:
    """The attributes an item text shows (`shown_attributes`) as "name: value, ..."."""
    return ", ".join(f"{name}: {value}" for name, value in shown_attributes(attributes, limit))


def field_value(value: Any) -> str:
    return clean_text(value) or MISSING_VALUE


def _fill(template: str, values: dict[str, str], table: str) -> str:
    """The template filled from `values`, spaces collapsed; a field it names that `values` lacks fails."""
    try:
        text = template.format_map(values)
    except KeyError as missing:
        raise KeyError(
            f"text template {template!r} names {missing} which is not a field of the {table} table; "
            f"use {', '.join('{' + f + '}' for f in values)}"
        ) from None
    return _SPACES.sub(" ", text).strip()


def render_item_texts(items: pd.DataFrame, template: str, attribute_limit: int) -> pd.Series:
    """One text per item row from a template of item fields and {attributes}; missing ones read "unknown"."""
    present = [field for field in ITEM_FIELDS if field in items.columns]
    has_attributes = "attributes" in items.columns
    texts = []
    for row in items.itertuples(index=False):
        values = {field: field_value(getattr(row, field)) for field in present}
        values["attributes"] = format_attributes(row.attributes, attribute_limit) if has_attributes else ""
        texts.append(_fill(template, values, "items"))
    return pd.Series(texts, index=items.index, dtype=object)


def item_text_frame(items: pd.DataFrame, cfg: RerankConfig) -> pd.DataFrame:
    """(item_id, item_text) for a pandas batch of the items table; item_text is None for an item without a
    title (null, blank or only control characters): there is nothing to rank it by."""
    texts = render_item_texts(items, cfg.item_template, cfg.item_attributes)
    titled = items["title"].map(clean_text) != ""
    return pd.DataFrame(
        {"item_id": items["item_id"].to_numpy(), "item_text": texts.where(titled, None).to_numpy()}
    )


# ---- Spark layer --------------------------------------------------------------------------------


def item_texts(items: DataFrame, cfg: RerankConfig) -> DataFrame:
    """(item_id, item_text) for every row of the items table, rendered by `render_item_texts`."""

    def render(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield item_text_frame(batch, cfg)

    columns = [c for c in (*ITEM_FIELDS, "attributes") if c in items.columns]
    return items.select(*columns).mapInPandas(render, "item_id string, item_text string")
