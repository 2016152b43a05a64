"""Maximal marginal relevance: relevance traded against similarity to items already placed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmrank_spark.metrics import (
    ITEM,
    Embeddings,
    unit_vectors,
)
from llmrank_spark.postprocess.greedy import Objective, rerank_each, within_list_relevance


def mmr_rerank(
    lists: pd.DataFrame,
    *,
    trade_off: float,
    k: int,
    item_category: pd.Series | None = None,
    embeddings: Embeddings | None = None,
) -> pd.DataFrame:
    """Each request's top k by maximal marginal relevance (Carbonell & Goldstein, 1998).

    Greedy objective: trade_off * relevance_i - (1 - trade_off) * max similarity of i to the items placed.
    Similarity is category equality (1 when same category; items without one are similar to none) when
    `item_category` is given, else the cosine of `embeddings`. trade_off = 1 is the relevance order.
    """
    if not 0 <= trade_off <= 1:
        raise ValueError(f"mmr_rerank: trade_off must be in [0, 1], got {trade_off}")
    if (item_category is None) == (embeddings is None):
        raise ValueError("mmr_rerank: pass exactly one of item_category or embeddings as the similarity")

    def order_one(one: pd.DataFrame) -> Objective:
        relevance = within_list_relevance(one).to_numpy()
        if item_category is not None:
            category = one[ITEM].map(item_category).to_numpy(dtype=object)
            same = (category[:, None] == category[None, :]) & pd.notna(category)[:, None]
            similarity = same.astype(float)
        else:
            units = unit_vectors(one[ITEM].tolist(), embeddings)
            similarity = units @ units.T

        def objective(picked: np.ndarray, available: np.ndarray) -> np.ndarray:
            redundancy = similarity[picked].max(axis=0) if len(picked) else np.zeros(len(relevance))
            return trade_off * relevance - (1 - trade_off) * redundancy

        return objective

    return rerank_each(lists, k, order_one)
