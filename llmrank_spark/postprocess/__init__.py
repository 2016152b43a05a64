"""Re-ranking after the model: provider fairness and diversity passes."""

from llmrank_spark.postprocess.diversity import mmr_rerank
from llmrank_spark.postprocess.fairness import (
    ProviderPolicy,
    fair_rerank,
    provider_boosts,
    provider_policy,
    with_providers,
)
from llmrank_spark.postprocess.greedy import within_list_relevance
from llmrank_spark.postprocess.reorder import MODEL_RANK, run_reorderer

__all__ = [
    "MODEL_RANK",
    "ProviderPolicy",
    "fair_rerank",
    "mmr_rerank",
    "provider_boosts",
    "provider_policy",
    "run_reorderer",
    "with_providers",
    "within_list_relevance",
]
