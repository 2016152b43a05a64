"""Input data sources: the sample lakehouse generator and the MovieLens 100K ingester."""

from llmrank_spark.data.movielens import load_movielens
from llmrank_spark.data.sample_lakehouse import (
    CATEGORIES,
    END_OF_LOG,
    PRICE_BANDS,
    SEGMENTS,
    generate_sample,
    simulate,
)

__all__ = [
    "CATEGORIES",
    "END_OF_LOG",
    "PRICE_BANDS",
    "SEGMENTS",
    "generate_sample",
    "load_movielens",
    "simulate",
]
