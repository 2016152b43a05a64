"""The semantic retriever: MiniLM item text embeddings against a shopper's recent-items profile."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from llmrank_spark.config import CandidatesConfig
from llmrank_spark.retrieval.inputs import RetrievalInputs
from llmrank_spark.retrieval.retrieved import empty_retrieval
from llmrank_spark.retrieval.vector_search import broadcast_top_k, profile_queries
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


def item_embeddings(items: DataFrame, cfg: CandidatesConfig) -> DataFrame:
    """(item_id, embedding): MiniLM text vectors of the catalogue, one encoder per Python worker."""
    template, attribute_limit = cfg.semantic_item_template, cfg.semantic_item_attributes

    def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from llmrank_spark.rerank import load_sentence_encoder, task_device

        encoder = load_sentence_encoder(str(task_device("auto")))  # cached: loaded once per worker
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


def encoded_queries(batch: pd.DataFrame, item_ids: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Query vectors: each query's text encoded by the same MiniLM model as the items, unit length."""
    from llmrank_spark.rerank import load_sentence_encoder, task_device

    encoder = load_sentence_encoder(str(task_device("auto")))  # cached: loaded once per worker
    vectors = encoder.encode(
        batch["query_text"].tolist(),
        batch_size=ENCODE_BATCH_SIZE,
        normalize_embeddings=True,
        convert_to_numpy=True,
    )
    return vectors.astype(np.float32)


def query_semantic_candidates(inputs: RetrievalInputs, queries: DataFrame, depth: int) -> DataFrame:
    """Items whose text is nearest (cosine) to the query's MiniLM vector; `queries` holds (request_id,
    query_text). Nothing is excluded: a search shows what was bought before too."""
    item_ids, matrix = inputs.item_text_matrix
    if not len(item_ids):
        return empty_retrieval(inputs, "query_semantic")
    return broadcast_top_k(
        inputs.spark, queries, None, item_ids, matrix, depth, "query_semantic", encoded_queries
    )
