"""Applying a re-ranking pass (fairness or diversity) to the ranked lists in Spark."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from llmrank_spark.config import FairnessConfig
from llmrank_spark.metrics import (
    RANK,
    REQUEST,
)
from llmrank_spark.postprocess.diversity import mmr_rerank
from llmrank_spark.postprocess.fairness import ProviderPolicy, fair_rerank, provider_boosts
from llmrank_spark.postprocess.greedy import SCORE

MODEL_RANK = "model_rank"


def run_reorderer(
    policy: ProviderPolicy,
    cfg: FairnessConfig,
    item_category: pd.Series | None = None,
    lambda_: float | None = None,
    model_order: pd.DataFrame | None = None,
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The run's fairness (and diversity) pass, as a function over any of its lists.

    lambda_ (cfg.weight unless given, as in sweeps) is the provider need's weight with
    `cfg.strategy` "list", and the largest run-level boost with "run": the boosts are then fitted once on
    `model_order`, the run's ranked lists in model order or a sample of whole lists from them
    (`provider_boosts`). The returned function re-orders whole lists (no item dropped): MMR by category
    first when `cfg.diversity` (the fairness pass then takes the MMR position as relevance, so its floor
    holds on the output either way), then `fair_rerank`, which keeps the first `cfg.keep_top` positions of
    that order. `rank` becomes the new position, `model_rank` keeps the position the lists came in and
    `score` the model score.
    """
    if cfg.diversity and item_category is None:
        raise ValueError("fairness.diversity is on: pass the items' categories (item_id -> category)")
    weight = cfg.weight if lambda_ is None else lambda_

    def relevance_order(lists: pd.DataFrame) -> pd.DataFrame:
        """The lists with `model_rank` kept and, with diversity on, `score` = minus the MMR position."""
        ordered = lists.assign(**{MODEL_RANK: lists[RANK]})
        if not cfg.diversity or ordered.empty:
            return ordered
        length = int(ordered.groupby(REQUEST).size().max())
        diversified = mmr_rerank(ordered, trade_off=cfg.mmr_trade_off, k=length, item_category=item_category)
        return diversified.assign(_model_score=diversified[SCORE], **{SCORE: -diversified[RANK] * 1.0})

    if cfg.strategy == "run":
        if model_order is None:
            raise ValueError("fairness.strategy is run: pass the run's model-order lists to fit boosts on")
        boosts = provider_boosts(
            relevance_order(model_order), policy, lambda_=weight, k=cfg.exposure_k, keep_top=cfg.keep_top
        )
        weights = {"need_weight": 0.0, "boosts": boosts}
    else:
        weights = {"need_weight": weight, "boosts": None}

    def reorder(lists: pd.DataFrame) -> pd.DataFrame:
        ordered = relevance_order(lists)
        if ordered.empty:
            return ordered
        length = int(ordered.groupby(REQUEST).size().max())
        fair = fair_rerank(
            ordered,
            policy,
            min_long_tail_share=cfg.min_long_tail_share,
            k=length,
            keep_top=cfg.keep_top,
            **weights,
        )
        if "_model_score" not in fair.columns:
            return fair
        return fair.assign(**{SCORE: fair["_model_score"]}).drop(columns="_model_score")

    return reorder
