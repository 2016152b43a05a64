"""What the nightly steps cannot process, and why: the `rejects` table, so nothing is dropped silently.

A bad input row is either repaired by a documented rule (control characters, invalid UTF-8, over-long
text, duplicate candidates) or rejected: written to `rejects` with one of the `REASONS` below. Every
rule is listed in docs/reliability.md with the test that injects it. `check_pairs` is the pure rule set
of the rerank step (candidate pairs of any requests in, each marked scorable or rejected), after
`mark_copies` has found the copies of a request's candidate in Spark; `as_rejects` shapes any step's
rejected rows into the table.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from llmrank_spark.lakehouse.contracts import conform
from llmrank_spark.text import NEW_SHOPPER_CONTEXT, clean_text

DUPLICATE_CANDIDATE = "duplicate_candidate"
ITEM_NOT_IN_CATALOGUE = "item_not_in_catalogue"
EMPTY_ITEM_TEXT = "empty_item_text"
UNKNOWN_REQUEST_TYPE = "unknown_request_type"
QUERY_NOT_FOUND = "query_not_found"
EMPTY_QUERY_TEXT = "empty_query_text"
QUERY_TOO_LONG = "query_too_long"
NON_FINITE_SCORE = "non_finite_score"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
NO_CANDIDATES = "no_candidates"

REASONS = {
    DUPLICATE_CANDIDATE: "the same item twice in a request's list; the copy with the best retrieval_rank "
    "is kept and scored",
    ITEM_NOT_IN_CATALOGUE: "the item is not in the items table (delisted, or never loaded)",
    EMPTY_ITEM_TEXT: "the item's title is null, blank or only control characters",
    UNKNOWN_REQUEST_TYPE: "request_type is neither 'user' nor 'query'",
    QUERY_NOT_FOUND: "a query request without a row in the queries table",
    EMPTY_QUERY_TEXT: "the query's text is null, blank or only control characters",
    QUERY_TOO_LONG: "the query's text is longer than candidates.max_query_chars: pasted text, not a search",
    NON_FINITE_SCORE: "the model scored the pair NaN or infinite",
    UNKNOWN_EVENT_TYPE: "an event type with no weight in candidates.event_weights",
    NO_CANDIDATES: "an active user or a query got no candidate at all (every item excluded, or an empty "
    "catalogue)",
}

# Candidate pairs joined to their texts, as `mark_copies` receives them (`check_pairs` also gets COPY_OF).
PAIR_COLUMNS = {
    "request_id": "string",
    "request_type": "string",
    "item_id": "string",
    "retrieval_rank": "int",
    "retrieval_score": "double",
    "sources": "array<string>",
    "source_ranks": "map<string,int>",  # read by a fine-tuned reranker's fusion head
    "in_catalogue": "boolean",  # null: no items row
    "item_text": "string",
    "context_found": "boolean",  # null: no context row (a user without history, or an unknown query)
    "context_text": "string",
}
# On every copy of a request's candidate but the one kept: the retrieval_rank of the kept copy, as text.
COPY_OF = "copy_of"
CHECKED_COLUMNS = {
    **{name: kind for name, kind in PAIR_COLUMNS.items() if name not in ("in_catalogue", "context_found")},
    "reason": "string",
    "detail": "string",
}
CHECKED_SCHEMA = ", ".join(f"{name} {kind}" for name, kind in CHECKED_COLUMNS.items())


def mark_copies(pairs: DataFrame) -> DataFrame:
    """`pairs` with COPY_OF set on every copy of a (request, item) but the best: the lowest retrieval_rank,
    then the highest retrieval_score, then the sources. A window per (request, item): the copies of a
    candidate are rows of its request, and a rule over one row at a time cannot see them."""
    copies = Window.partitionBy("request_type", "request_id", "item_id").orderBy(
        F.asc_nulls_last("retrieval_rank"),
        F.desc_nulls_last("retrieval_score"),
        F.concat_ws(",", "sources"),
    )
    kept_rank = F.coalesce(F.first("retrieval_rank").over(copies).cast("string"), F.lit("null"))
    return pairs.withColumn(COPY_OF, F.when(F.row_number().over(copies) > 1, kept_rank))


def check_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Candidate pairs (PAIR_COLUMNS and COPY_OF, of any requests), each with `reason` None (to be scored)
    or why it is rejected; rows are independent, so a batch may cut a request anywhere.

    The first rule that applies wins: duplicate, item not in catalogue, empty item text, unknown request
    type, query not found, empty query text. Texts come back cleaned; a user without history gets
    `NEW_SHOPPER_CONTEXT`.
    """
    reason = pd.Series([None] * len(pairs), index=pairs.index, dtype=object)
    detail = reason.copy()

    def reject(rows: pd.Series, why: str, what) -> None:
        fresh = rows & reason.isna()
        reason[fresh] = why
        detail[fresh] = what[fresh] if isinstance(what, pd.Series) else what

    copy_of = pairs[COPY_OF]
    reject(copy_of.notna(), DUPLICATE_CANDIDATE, "kept the copy at retrieval_rank " + copy_of.fillna(""))
    reject(pairs["in_catalogue"].isna(), ITEM_NOT_IN_CATALOGUE, "no row in the items table")
    reject(pairs["item_text"].isna(), EMPTY_ITEM_TEXT, "title is null or blank")
    is_user, is_query = pairs["request_type"] == "user", pairs["request_type"] == "query"
    reject(~(is_user | is_query), UNKNOWN_REQUEST_TYPE, "request_type " + pairs["request_type"].map(repr))
    context = pairs["context_text"].map(clean_text)
    reject(is_query & pairs["context_found"].isna(), QUERY_NOT_FOUND, "no row in the queries table")
    reject(is_query & (context == ""), EMPTY_QUERY_TEXT, "query_text is null or blank")
    context = context.where(~(is_user & pairs["context_found"].isna()), NEW_SHOPPER_CONTEXT)
    checked = pairs.assign(context_text=context, reason=reason, detail=detail)
    return checked[list(CHECKED_COLUMNS)]


def as_rejects(frame: DataFrame, run_date: dt.date, step: str, input_table: str | Column) -> DataFrame:
    """Rows (request_type, request_id, item_id, reason, detail) as the `rejects` table's rows for a step."""
    table = F.lit(input_table) if isinstance(input_table, str) else input_table
    return conform(
        frame.select(
            F.lit(run_date).alias("run_date"),
            F.lit(step).alias("step"),
            table.alias("input_table"),
            "request_type",
            "request_id",
            "item_id",
            "reason",
            "detail",
        ),
        "rejects",
    )
