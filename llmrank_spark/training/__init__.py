"""Training: lists from behaviour, losses, fine-tuning, the fusion fit, the registry and the gate."""

from llmrank_spark.training.champion import (
    CHAMPION,
    REJECTED,
    champion_path,
    decide,
    gate_cutoff,
    gate_version,
    served_config,
    training_end,
)
from llmrank_spark.training.distributed import distributor_mode, fit_with_distributor
from llmrank_spark.training.extract import training_lists
from llmrank_spark.training.fusion_training import fusion_lists
from llmrank_spark.training.lists import (
    event_grades,
    history_before,
    leave_last_out,
    rank_by_score,
    sample_lists,
    target_contexts,
)
from llmrank_spark.training.losses import ranking_loss
from llmrank_spark.training.network import FusionRanker, freeze_lower_layers, initial_model, optimizer_for
from llmrank_spark.training.registry import latest_registered, registry_row
from llmrank_spark.training.train import train_reranker
from llmrank_spark.training.trainer import fit, list_ndcg, score_lists, training_scorer

__all__ = [
    "CHAMPION",
    "REJECTED",
    "FusionRanker",
    "champion_path",
    "decide",
    "distributor_mode",
    "event_grades",
    "fit",
    "fit_with_distributor",
    "freeze_lower_layers",
    "fusion_lists",
    "gate_cutoff",
    "gate_version",
    "history_before",
    "initial_model",
    "latest_registered",
    "leave_last_out",
    "list_ndcg",
    "optimizer_for",
    "rank_by_score",
    "ranking_loss",
    "registry_row",
    "sample_lists",
    "score_lists",
    "served_config",
    "target_contexts",
    "train_reranker",
    "training_end",
    "training_lists",
    "training_scorer",
]
