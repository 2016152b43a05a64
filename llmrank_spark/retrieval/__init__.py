"""Candidates: several retrievers in Spark and a blender, one list of N items per request."""

from llmrank_spark.retrieval.blending import blend
from llmrank_spark.retrieval.candidates import build_candidates
from llmrank_spark.retrieval.covisitation import covisit_scores
from llmrank_spark.retrieval.inputs import SECONDS_PER_DAY, RetrievalInputs, prepare_inputs
from llmrank_spark.retrieval.item_vectors import Refresh, item_vectors, refresh_item_vectors
from llmrank_spark.retrieval.popularity import item_popularity, popularity_candidates
from llmrank_spark.retrieval.registry import retrieve_all
from llmrank_spark.retrieval.semantic import item_embeddings, semantic_candidates
from llmrank_spark.retrieval.vector_search import positions, rank_against, recency_profiles, top_k

__all__ = [
    "SECONDS_PER_DAY",
    "Refresh",
    "RetrievalInputs",
    "blend",
    "build_candidates",
    "covisit_scores",
    "item_embeddings",
    "item_popularity",
    "item_vectors",
    "popularity_candidates",
    "positions",
    "prepare_inputs",
    "rank_against",
    "recency_profiles",
    "refresh_item_vectors",
    "retrieve_all",
    "semantic_candidates",
    "top_k",
]
