"""The learned fusion's own lists (never those BERT trained on) and its LambdaMART fit."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from llmrank_spark.config import TrainConfig
from llmrank_spark.rerank import (
    BERT_SCORE,
    FEATURES,
    PRERANK_FILE,
    FusionModel,
    FusionSettings,
    fit_fusion,
)
from llmrank_spark.training.lists import ITEM, LABEL, LIST, _unseen_sampler
from llmrank_spark.training.network import FusionRanker
from llmrank_spark.training.trainer import training_scorer


def fusion_users(user_ids: pd.Series, share: float) -> pd.Series:
    """True for the users (a stable hash-chosen `share` of them) whose lists train the fusion, not BERT."""
    hashed = user_ids.map(lambda user: int(hashlib.sha256(str(user).encode()).hexdigest()[:8], 16))
    return hashed < share * 16**8


def fusion_lists(
    targets: pd.DataFrame,
    candidates: pd.DataFrame,
    interacted: pd.DataFrame,
    catalogue: np.ndarray,
    cfg: TrainConfig,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """(list_id, user_id, item_id, label): two lists per user, as the reranker meets them on the day after
    the user's history, labelled by the user's targets (graded; everything else 0):

    - ``<user>``: their candidate list, as the rerank step serves it: the fusion learns to order what
      the retrievers proposed;
    - ``<user>#open``: their targets among `fusion_random_negatives` catalogue items they never touched,
      as in a list made elsewhere (an upstream team's, a held-out protocol's): the fusion learns to rank
      items no retriever proposed, and that a proposed item beats one nobody proposed.

    One list holding both would teach the opposite of the truth: targets the retrievers missed are a far
    larger share of the unproposed items in it than targets are of the proposed ones.
    """
    seen = interacted.groupby("user_id")[ITEM].agg(set)
    proposed = candidates.groupby("request_id")[ITEM].agg(list)
    draw = _unseen_sampler(catalogue, None, 0.0)
    rows = []
    for user, answers in targets.groupby("user_id", sort=True):
        grades = answers.groupby(ITEM)[LABEL].max()
        served = proposed.get(user, [])
        opened = list(grades.index)
        draw(opened, seen.get(user, set()), len(opened) + cfg.fusion_random_negatives, rng)
        for list_id, items in ((str(user), served), (f"{user}#open", opened)):
            if grades.reindex(items).fillna(0).gt(0).any():  # a list with no target teaches nothing
                rows += [(list_id, user, item, float(grades.get(item, 0.0))) for item in items]
    return pd.DataFrame(rows, columns=[LIST, "user_id", ITEM, LABEL])


@dataclass(frozen=True)
class TrainedFusion:
    """The version's two LambdaMART models, fitted on the same lists: `fusion` over the ranking features
    and the BERT logit, `prerank` over the features alone (it picks the candidates BERT scores)."""

    fusion: FusionModel
    prerank: FusionModel

    def save(self, directory: Path) -> None:
        self.fusion.save(directory)
        self.prerank.save(directory)


def train_fusion(model: FusionRanker, tokenizer, lists: pd.DataFrame, cfg: TrainConfig) -> TrainedFusion:
    """LambdaMART over the ranking features and the trained BERT logit of the fusion lists, and over the
    features alone; the last fifth of the lists (by list_id) early-stops the trees."""
    scorer = training_scorer(model, tokenizer, cfg, torch.device("cpu"))
    model.eval()
    lists = lists.sort_values([LIST, ITEM], kind="mergesort", ignore_index=True)
    lists[BERT_SCORE] = scorer.score(lists["context_text"].tolist(), lists["item_text"].tolist())
    list_ids = lists[LIST].drop_duplicates()
    held = lists[LIST].isin(list_ids.iloc[int(len(list_ids) * 0.8) :])
    settings = FusionSettings(
        trees=cfg.fusion_trees,
        learning_rate=cfg.fusion_learning_rate,
        leaves=cfg.fusion_leaves,
        seed=cfg.seed,
    )
    return TrainedFusion(
        fusion=fit_fusion(lists[~held], lists[held], [*FEATURES, BERT_SCORE], settings),
        prerank=fit_fusion(lists[~held], lists[held], list(FEATURES), settings, file=PRERANK_FILE),
    )
