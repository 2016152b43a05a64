"""Re-ranking after the model: provider fairness and diversity passes."""

from llmrank_spark.postprocess.det_const_sort import det_const_sort_rerank
from llmrank_spark.postprocess.diversity import mmr_rerank
from llmrank_spark.postprocess.fa_ir import (
    meet_prefix_table,
    prefix_guarantee_held,
    prefix_guarantee_per_list,
    prefix_table,
)
from llmrank_spark.postprocess.fairness import (
    ProviderPolicy,
    fair_rerank,
    provider_boosts,
    provider_policy,
    with_providers,
)
from llmrank_spark.postprocess.greedy import within_list_relevance
from llmrank_spark.postprocess.reorder import MODEL_RANK, run_reorderer
from llmrank_spark.postprocess.targets import (
    Calibration,
    TargetCheck,
    calibrate,
    calibrate_run,
    check_targets,
    targets_reached,
)

__all__ = [
    "MODEL_RANK",
    "Calibration",
    "ProviderPolicy",
    "TargetCheck",
    "calibrate",
    "calibrate_run",
    "check_targets",
    "det_const_sort_rerank",
    "fair_rerank",
    "meet_prefix_table",
    "mmr_rerank",
    "prefix_guarantee_held",
    "prefix_guarantee_per_list",
    "prefix_table",
    "provider_boosts",
    "provider_policy",
    "run_reorderer",
    "targets_reached",
    "with_providers",
    "within_list_relevance",
]
