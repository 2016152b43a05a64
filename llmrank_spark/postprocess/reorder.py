"""Applying a re-ranking pass (fairness or diversity) to the ranked lists in Spark."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from llmrank_spark.config import FairnessConfig
from llmrank_spark.metrics import (
    RANK,
    REQUEST,
)
from llmrank_spark.postprocess.det_const_sort import det_const_sort_rerank
from llmrank_spark.postprocess.diversity import mmr_rerank
from llmrank_spark.postprocess.fa_ir import meet_prefix_table
from llmrank_spark.postprocess.fairness import ProviderPolicy, fair_rerank, provider_boosts
from llmrank_spark.postprocess.greedy import SCORE

MODEL_RANK = "model_rank"


def run_reorderer(
    policy: ProviderPolicy,
    cfg: FairnessConfig,
    item_category: pd.Series | None = None,
    strength: float | None = None,
    model_order: pd.DataFrame | None = None,
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The run's fairness (and diversity) pass, as a function over any of its lists.

    strength (cfg.weight unless given: a sweep's or the calibrated one) is the strategy's one knob in
    [0, 1]: the provider need's weight with "list", the largest run-level boost with "run" (the boosts
    are then fitted once on `model_order`, the run's lists in model order or a sample of whole lists from
    them, `provider_boosts`), FA*IR's protected proportion with "fa_ir", the long tail's desired share
    with "det_const_sort". The returned function re-orders whole lists (no item dropped): MMR by category
    first when `cfg.diversity` (the pass then takes the MMR position as relevance), then the strategy,
    which keeps the first `cfg.keep_top` positions of that order. With control target and a prefix
    share, FA*IR's prefix guarantee is then enforced on the whole list (it overrides keep_top). `rank`
    becomes the new position, `model_rank` keeps the position the lists came in and `score` the model
    score.
    """
    if cfg.diversity and item_category is None:
        raise ValueError("fairness.diversity is on: pass the items' categories (item_id -> category)")
    weight = cfg.weight if strength is None else strength
    if not 0 <= weight <= 1:
        raise ValueError(f"fairness: the strength must be in [0, 1], got {weight}")

    def relevance_order(lists: pd.DataFrame) -> pd.DataFrame:
        """The lists with `model_rank` kept and, with diversity on, `score` = minus the MMR position."""
        ordered = lists.assign(**{MODEL_RANK: lists[RANK]})
        if not cfg.diversity or ordered.empty:
            return ordered
        length = int(ordered.groupby(REQUEST).size().max())
        diversified = mmr_rerank(ordered, trade_off=cfg.mmr_trade_off, k=length, item_category=item_category)
        return diversified.assign(_model_score=diversified[SCORE], **{SCORE: -diversified[RANK] * 1.0})

    strategy = _strategy(policy, cfg, weight, None if model_order is None else relevance_order(model_order))
    prefix = cfg.target.prefix_share if cfg.control == "target" else None

    def reorder(lists: pd.DataFrame) -> pd.DataFrame:
        ordered = relevance_order(lists)
        if ordered.empty:
            return ordered
        fair = strategy(ordered)
        if prefix is not None:
            fair = meet_prefix_table(
                fair.assign(**{SCORE: -fair[RANK] * 1.0, "_fair_score": fair[SCORE]}),
                policy,
                prefix,
                cfg.target.prefix_alpha,
            )
            fair = fair.assign(**{SCORE: fair["_fair_score"]}).drop(columns="_fair_score")
        if "_model_score" not in fair.columns:
            return fair
        return fair.assign(**{SCORE: fair["_model_score"]}).drop(columns="_model_score")

    return reorder


def _strategy(
    policy: ProviderPolicy, cfg: FairnessConfig, strength: float, model_order: pd.DataFrame | None
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """`cfg.strategy` at `strength`, over lists already in relevance order (whole lists kept)."""
    if cfg.strategy == "fa_ir":
        return lambda lists: meet_prefix_table(lists, policy, strength, cfg.fa_ir_alpha, cfg.keep_top)
    if cfg.strategy == "det_const_sort":
        return lambda lists: det_const_sort_rerank(lists, policy, strength, cfg.keep_top)
    weights: dict = {"need_weight": strength, "boosts": None}
    if cfg.strategy == "run":
        if model_order is None:
            raise ValueError("fairness.strategy is run: pass the run's model-order lists to fit boosts on")
        boosts = provider_boosts(
            model_order, policy, lambda_=strength, k=cfg.exposure_k, keep_top=cfg.keep_top
        )
        weights = {"need_weight": 0.0, "boosts": boosts}

    def greedy(lists: pd.DataFrame) -> pd.DataFrame:
        length = int(lists.groupby(REQUEST).size().max())
        return fair_rerank(
            lists,
            policy,
            min_long_tail_share=cfg.min_long_tail_share,
            k=length,
            keep_top=cfg.keep_top,
            **weights,
        )

    return greedy
