"""Search queries as requests: which rows of the `queries` table are ranked, and their candidate lists.

A query's list comes from the lexical (BM25) and the query semantic (MiniLM, or the query encoder
fine-tuned on judged queries) retrievers, blended like a user's. Query lists are request_type 'query'
and never mix with user lists: every join and window is by request and the two kinds are built apart,
so a query and a user with the same id stay two requests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from llmrank_spark.lakehouse import EMPTY_QUERY_TEXT, QUERY_TOO_LONG, checkpointed
from llmrank_spark.retrieval.blending import blend
from llmrank_spark.retrieval.inputs import RetrievalInputs
from llmrank_spark.retrieval.lexical import lexical_candidates
from llmrank_spark.retrieval.semantic import QueryEncoder, query_semantic_candidates
from llmrank_spark.text import clean_text

CHECKED_QUERIES_SCHEMA = "request_id string, query_text string, reason string, detail string"


# ---- pure functions over pandas batches ---------------------------------------------------------------


def check_queries(queries: pd.DataFrame, max_chars: int) -> pd.DataFrame:
    """(request_id, query_text, reason, detail) per `queries` row (query_id, query_text): the text cleaned
    (`clean_text`), reason None for a query to rank, else why it is rejected: nothing left after
    cleaning, or more than `max_chars` characters."""
    texts = queries["query_text"].map(clean_text)
    lengths = texts.str.len().to_numpy()
    empty, too_long = lengths == 0, lengths > max_chars
    reason, detail = np.full(len(texts), None, dtype=object), np.full(len(texts), None, dtype=object)
    reason[too_long] = QUERY_TOO_LONG
    detail[too_long] = [
        f"query_text has {n} characters, more than candidates.max_query_chars ({max_chars})"
        for n in lengths[too_long]
    ]
    reason[empty] = EMPTY_QUERY_TEXT
    detail[empty] = "query_text is null, blank or only control characters"
    return pd.DataFrame(
        {
            "request_id": queries["query_id"].to_numpy(),
            "query_text": np.where(empty | too_long, None, texts.to_numpy(dtype=object)),
            "reason": reason,
            "detail": detail,
        }
    )


# ---- Spark layer --------------------------------------------------------------------------------------


def checked_queries(queries: DataFrame, max_chars: int) -> DataFrame:
    """`check_queries` over the `queries` table, batch by batch on the executors."""

    def check(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield check_queries(batch, max_chars)

    return queries.select("query_id", "query_text").mapInPandas(check, CHECKED_QUERIES_SCHEMA)


def query_lists(
    inputs: RetrievalInputs,
    queries: DataFrame,
    run_date: dt.date,
    encoder: QueryEncoder | None = None,
    semantic: DataFrame | None = None,
) -> tuple[DataFrame, DataFrame]:
    """The `candidates` rows of every rankable query (request_type 'query'), and the rejected queries as
    (request_type, request_id, item_id, reason, detail) rows. `encoder`: the fine-tuned query encoder
    of the query semantic retriever; None: the packaged MiniLM. `semantic`: that retriever's lists when
    already found by a fine-tuned encoder (the train step's, still in memory), in the retrievers' form."""
    checked = checkpointed(checked_queries(queries, inputs.cfg.max_query_chars))
    rankable = checked.where(F.col("reason").isNull()).select("request_id", "query_text")
    depth = inputs.cfg.n_per_request
    retrieved = [
        lexical_candidates(inputs.spark, inputs.items, rankable, inputs.cfg, depth),
        query_semantic_candidates(inputs, rankable, depth, encoder) if semantic is None else semantic,
    ]
    fine_tuned = encoder is not None or semantic is not None
    cfg = inputs.cfg.with_query_encoder() if fine_tuned else inputs.cfg
    candidates = blend(retrieved, None, cfg, run_date, request_type="query")
    rejected = checked.where(F.col("reason").isNotNull()).select(
        F.lit("query").alias("request_type"),
        "request_id",
        F.lit(None).cast("string").alias("item_id"),
        "reason",
        "detail",
    )
    return candidates, rejected
