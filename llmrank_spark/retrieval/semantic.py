"""The semantic retriever: MiniLM item text embeddings against a shopper's recent-items profile."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from llmrank_spark.config import CandidatesConfig
from llmrank_spark.retrieval.inputs import RetrievalInputs
from llmrank_spark.retrieval.retrieved import empty_retrieval
from llmrank_spark.retrieval.vector_search import broadcast_top_k, collect_matrix, profile_queries
from llmrank_spark.text import ITEM_FIELDS, render_item_texts

EMBEDDING_SCHEMA = "item_id string, embedding array<float>"
ENCODE_BATCH_SIZE = 64


def embed_items(items: pd.DataFrame, template: str, attribute_limit: int, encoder) -> pd.DataFrame:
    """(item_id, unit-length text embedding) for a batch of catalogue rows."""
    texts = render_item_texts(items, template, attribute_limit).tolist()
    vectors = encoder.encode(
        texts, batch_size=ENCODE_BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True
    )
    return pd.DataFrame(
        {"item_id": items["item_id"].to_numpy(), "embedding": list(vectors.astype(np.float32))}
    )


def item_embeddings(items: DataFrame, cfg: CandidatesConfig, encoder_dir: str | None = None) -> DataFrame:
    """(item_id, embedding): text vectors of the catalogue, one encoder per Python worker: the packaged
    MiniLM, or the query encoder at `encoder_dir`."""
    template, attribute_limit = cfg.semantic_item_template, cfg.semantic_item_attributes

    def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from llmrank_spark.rerank import load_sentence_encoder, task_device

        # cached: loaded once per worker
        encoder = load_sentence_encoder(str(task_device("auto")), encoder_dir)
        for batch in batches:
            yield embed_items(batch, template, attribute_limit, encoder)

    columns = [c for c in (*ITEM_FIELDS, "attributes") if c in items.columns]
    return items.select(*columns).mapInPandas(encode, EMBEDDING_SCHEMA)


def semantic_candidates(inputs: RetrievalInputs, depth: int) -> DataFrame:
    """Items whose text is nearest (cosine) to the recency-weighted profile of the user's recent items."""
    if not inputs.has_events:
        return empty_retrieval(inputs, "semantic")
    item_ids, matrix = inputs.item_text_matrix
    histories = (
        inputs.history.where(F.col("position") <= inputs.cfg.recent_items)
        .groupBy(F.col("user_id").alias("request_id"))
        .agg(F.array_sort(F.collect_list(F.struct("item_id", "weight"))).alias("history"))
    )
    return broadcast_top_k(
        inputs.spark, histories, inputs.exclusions, item_ids, matrix, depth, "semantic", profile_queries
    )


def encoded_queries(
    batch: pd.DataFrame, item_ids: np.ndarray, matrix: np.ndarray, encoder_dir: str | None = None
) -> np.ndarray:
    """Query vectors: each query's text encoded by the same model as the items (the packaged MiniLM, or
    the query encoder at `encoder_dir`), unit length."""
    from llmrank_spark.rerank import load_sentence_encoder, task_device

    # cached: loaded once per worker
    encoder = load_sentence_encoder(str(task_device("auto")), encoder_dir)
    vectors = encoder.encode(
        batch["query_text"].tolist(),
        batch_size=ENCODE_BATCH_SIZE,
        normalize_embeddings=True,
        convert_to_numpy=True,
    )
    return vectors.astype(np.float32)


@dataclass(frozen=True)
class Encoder:
    """A text encoder of item and query texts: its name (the `encoder` key of `item_embeddings`) and its
    sentence-transformers directory; None is the packaged MiniLM."""

    name: str
    directory: str | None = None


@dataclass(frozen=True)
class QueryEncoder:
    """The fine-tuned query encoder the query semantic retriever uses instead of the packaged MiniLM, and
    the catalogue's vectors under it (item_id, embedding) as the candidates step keeps them in
    `item_embeddings`; None encodes the catalogue here."""

    encoder: Encoder
    item_vectors: DataFrame | None = None


def query_semantic_candidates(
    inputs: RetrievalInputs, queries: DataFrame, depth: int, encoder: QueryEncoder | None = None
) -> DataFrame:
    """Items whose text is nearest (cosine) to the query's vector; `queries` holds (request_id,
    query_text). Both are encoded by the packaged MiniLM, or by a fine-tuned query `encoder`
    (training/query_encoder.py). Nothing is excluded: a search shows what was bought before too."""
    if encoder is None:
        item_ids, matrix = inputs.item_text_matrix
    else:
        vectors = encoder.item_vectors
        if vectors is None:
            vectors = item_embeddings(inputs.items, inputs.cfg, encoder.encoder.directory)
        item_ids, matrix = collect_matrix(vectors, "embedding", inputs.cfg, "items")
    if not len(item_ids):
        return empty_retrieval(inputs, "query_semantic")
    query_vectors = partial(
        encoded_queries, encoder_dir=None if encoder is None else encoder.encoder.directory
    )
    return broadcast_top_k(
        inputs.spark, queries, None, item_ids, matrix, depth, "query_semantic", query_vectors
    )
