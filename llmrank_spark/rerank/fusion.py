"""The learned fusion: LambdaMART over the ranking features and the BERT score, the reranker's last layer.

LightGBM's `lambdarank` objective (gradient-boosted trees optimising NDCG directly) learns how far to
trust each feature and the BERT score from lists the BERT model did not train on, so the trust is
honest. docs/training.md says why LightGBM and not XGBoost (bench/fusion_learners.py measures both).
The model is kept as LightGBM's own text format inside the reranker artifact (`fusion_lgbm.txt`,
read by `lightgbm.Booster(model_str=...)`: no pickle, nothing executable) and applied per request
after BERT in the rerank step, by `FusionModel.score` in training, evaluation and serving alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llmrank_spark.rerank.artifact import FUSION_FILE, FusionSpec
from llmrank_spark.rerank.features import feature_matrix

# The column of the BERT model's logit among a fusion model's inputs.
BERT_SCORE = "bert_score"
# Highest relevance grade LambdaMART's label gain is defined for: grades are scaled to 0..GRADE_LEVELS.
GRADE_LEVELS = 4


@dataclass(frozen=True)
class FusionSettings:
    """LambdaMART's knobs (train.fusion_*). Small trees and a low rate: lists are few on a sample."""

    trees: int = 300
    learning_rate: float = 0.05
    leaves: int = 15
    min_rows_in_leaf: int = 20
    early_stopping: int = 30
    seed: int = 42


def relevance_levels(labels: np.ndarray) -> np.ndarray:
    """Graded labels in [0, 1] as the integer levels 0..GRADE_LEVELS that lambdarank needs."""
    return np.rint(np.clip(labels, 0.0, 1.0) * GRADE_LEVELS).astype(np.int32)


def _group_sizes(list_ids: pd.Series) -> np.ndarray:
    """Rows per list, in order of appearance; each list's rows must be contiguous."""
    changes = list_ids.ne(list_ids.shift()).cumsum()
    if changes.iloc[-1] != list_ids.nunique():
        raise ValueError("fusion lists: a list's rows are not contiguous; sort by list_id first")
    return changes.value_counts(sort=False).sort_index().to_numpy()


class FusionModel:
    """A trained LambdaMART fusion: `score` maps a frame of its inputs to one score per row."""

    def __init__(self, booster, spec: FusionSpec) -> None:
        self.booster = booster
        self.spec = spec

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Scores of `frame`'s rows (every column of `spec.inputs`; nulls are LightGBM's missing)."""
        if frame.empty:
            return np.zeros(0, dtype=np.float64)
        scores = self.booster.predict(feature_matrix(frame, self.spec.inputs), num_threads=1)
        return np.asarray(scores, dtype=np.float64)

    def save(self, directory: str | Path) -> FusionSpec:
        (Path(directory) / self.spec.file).write_text(self.text())
        return self.spec

    def text(self) -> str:
        """LightGBM's text format of the trees: what the artifact holds and the rerank step ships."""
        return self.booster.model_to_string()

    @classmethod
    def from_text(cls, text: str, spec: FusionSpec) -> FusionModel:
        import lightgbm

        return cls(lightgbm.Booster(model_str=text), spec)

    @classmethod
    def load(cls, directory: str | Path, spec: FusionSpec) -> FusionModel:
        path = Path(directory) / spec.file
        if not path.is_file():
            raise FileNotFoundError(
                f"reranker artifact {directory} names a fusion model {spec.file} it does not hold; "
                f"re-train it with `llmrank train`"
            )
        return cls.from_text(path.read_text(), spec)

    def importance(self) -> dict[str, float]:
        """Each input's share of the total split gain: how much the trees lean on it."""
        gains = self.booster.feature_importance(importance_type="gain")
        total = float(gains.sum()) or 1.0
        return {name: float(g) / total for name, g in zip(self.spec.inputs, gains, strict=True)}


def fit_fusion(
    train: pd.DataFrame,
    validation: pd.DataFrame | None,
    inputs: list[str],
    settings: FusionSettings,
    list_column: str = "list_id",
    label_column: str = "label",
    file: str = FUSION_FILE,
    directions: Mapping[str, int] | None = None,
) -> FusionModel:
    """LambdaMART on `train`'s lists (rows of a list contiguous), early-stopped on NDCG@10 of `validation`
    (None: all `settings.trees` trees); `file` names its text file in an artifact. `directions`: inputs
    the score may only rise (1) or only fall (-1) with, LightGBM's monotone constraints."""
    import lightgbm

    def dataset(frame: pd.DataFrame, reference=None):
        return lightgbm.Dataset(
            feature_matrix(frame, inputs),
            label=relevance_levels(frame[label_column].to_numpy(dtype=np.float64)),
            group=_group_sizes(frame[list_column]),
            feature_name=list(inputs),
            reference=reference,
            free_raw_data=False,
        )

    train_set = dataset(train)
    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        "learning_rate": settings.learning_rate,
        "num_leaves": settings.leaves,
        "min_data_in_leaf": settings.min_rows_in_leaf,
        "label_gain": [float(2**level - 1) for level in range(GRADE_LEVELS + 1)],
        "seed": settings.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "verbosity": -1,
    }
    if directions:
        params["monotone_constraints"] = [directions.get(name, 0) for name in inputs]
        params["monotone_constraints_method"] = "advanced"
    valid_sets: list = []
    callbacks: list = []
    if validation is not None:
        valid_sets = [dataset(validation, reference=train_set)]
        callbacks = [lightgbm.early_stopping(settings.early_stopping, verbose=False)]
    booster = lightgbm.train(
        params, train_set, num_boost_round=settings.trees, valid_sets=valid_sets, callbacks=callbacks
    )
    trees = booster.best_iteration or booster.current_iteration()
    booster = lightgbm.Booster(model_str=booster.model_to_string(num_iteration=trees))
    return FusionModel(booster, FusionSpec(inputs=list(inputs), trees=trees, file=file))
