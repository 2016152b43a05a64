"""The retrievers by name: adding a retriever is one file plus one line here."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame

from llmrank_spark.retrieval.als import als_candidates
from llmrank_spark.retrieval.covisitation import covisit_candidates
from llmrank_spark.retrieval.inputs import RetrievalInputs
from llmrank_spark.retrieval.popularity import category_popularity_candidates, popularity_candidates
from llmrank_spark.retrieval.semantic import semantic_candidates

RETRIEVER_FUNCTIONS: dict[str, Callable[[RetrievalInputs, int], DataFrame]] = {
    "covisit": covisit_candidates,
    "als": als_candidates,
    "semantic": semantic_candidates,
    "category_popularity": category_popularity_candidates,
    "popularity": popularity_candidates,
}


def retrieve_all(inputs: RetrievalInputs, depth: int) -> dict[str, DataFrame]:
    """Every retriever's list of up to `depth` items per user, by source name."""
    return {source: retrieve(inputs, depth) for source, retrieve in RETRIEVER_FUNCTIONS.items()}
