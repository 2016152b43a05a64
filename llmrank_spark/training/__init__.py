"""Training: lists from behaviour, losses, fine-tuning, the fusion fit, the MLflow registry and the gate."""

from llmrank_spark.training.champion import (
    CHAMPION,
    REGISTERED,
    REJECTED,
    decide,
    gate_cutoff,
    gate_version,
    served_config,
    serves_bert,
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
from llmrank_spark.training.registry import (
    CHAMPION_ALIAS,
    SERVES_BERT_TAG,
    artifact_dir,
    champion_version,
    newest_version,
    registered_query_encoder,
    registry_client,
    served_version,
    training_run,
)
from llmrank_spark.training.train import train_reranker
from llmrank_spark.training.trainer import fit, list_ndcg, score_lists, training_scorer

__all__ = [
    "CHAMPION",
    "CHAMPION_ALIAS",
    "REGISTERED",
    "REJECTED",
    "SERVES_BERT_TAG",
    "FusionRanker",
    "artifact_dir",
    "champion_version",
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
    "leave_last_out",
    "list_ndcg",
    "newest_version",
    "optimizer_for",
    "rank_by_score",
    "ranking_loss",
    "registered_query_encoder",
    "registry_client",
    "sample_lists",
    "score_lists",
    "served_config",
    "served_version",
    "serves_bert",
    "target_contexts",
    "train_reranker",
    "training_end",
    "training_lists",
    "training_run",
    "training_scorer",
]
