"""Post-processing re-rankers over each ranked list: provider-exposure fairness and MMR diversity.

Both are greedy: position by position they place the remaining candidate with the best objective, ties
going to the candidate that comes first in the relevance order (score descending, then the input rank
if there is one, then item_id). A list is re-ranked on its own, with no state carried from list to
list, so Spark can run them per request in ``applyInPandas`` and the result does not depend on the
order lists arrive in; run-wide popularity enters once, through the `ProviderPolicy` built beforehand.
No maintained library offers FA*IR-style constrained re-ranking or MMR over pandas lists (the FA*IR
authors' code is an unmaintained research package), so both greedy loops are written here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmrank_spark.config import FairnessConfig
from llmrank_spark.metrics import ITEM, RANK, REQUEST, Embeddings, share_held_above, unit_vectors

SCORE = "score"
# Tolerance for floor(share * p): 0.29 * 100 is 28.999999999999996 in floating point, not 29.
_FLOOR_EPS = 1e-9


@dataclass(frozen=True)
class ProviderPolicy:
    """Who provides each item and how much exposure each provider needs.

    need: provider -> share of all interactions held by more popular providers, in [0, 1): 0 for the
    most popular provider, close to 1 for the least. long_tail: the protected group, the providers whose
    need is at least the head share (outside the top providers that hold that share of interactions).
    """

    item_provider: pd.Series
    need: pd.Series
    long_tail: frozenset[str]


def provider_policy(items: pd.DataFrame, item_popularity: pd.Series, head_share: float) -> ProviderPolicy:
    """The policy from the catalogue (item_id, brand) and item interaction counts (item_id -> count).

    The long tail is every provider outside the smallest set of most popular providers that together
    hold `head_share` of all interactions; providers whose items were never interacted with are in it.
    Items without a brand have no provider: they need nothing and are never protected.
    """
    if not 0 < head_share < 1:
        raise ValueError(f"fairness: long-tail head share must be in (0, 1), got {head_share}")
    missing = [c for c in (ITEM, "brand") if c not in items.columns]
    if missing:
        raise ValueError(f"items: missing columns {missing}; the provider of an item is its brand")
    item_provider = items.dropna(subset=["brand"]).set_index(ITEM)["brand"]
    if item_provider.empty:
        raise ValueError("items: no item has a brand, so there are no providers to be fair to")
    interactions = item_popularity.reindex(item_provider.index, fill_value=0)
    provider_counts = interactions.groupby(item_provider).sum()
    need = share_held_above(provider_counts).rename("need")
    return ProviderPolicy(item_provider, need, frozenset(need.index[need >= head_share]))


def _relevance_order(lists: pd.DataFrame) -> pd.DataFrame:
    """Lists sorted best first: score descending, then the input rank if any, then item_id."""
    missing = [c for c in (REQUEST, ITEM, SCORE) if c not in lists.columns]
    if missing:
        raise ValueError(f"re-ranking: lists lack columns {missing}; pass the ranked table's rows")
    keys = [REQUEST, SCORE, *([RANK] if RANK in lists.columns else []), ITEM]
    ascending = [key != SCORE for key in keys]
    return lists.sort_values(keys, ascending=ascending, kind="mergesort").reset_index(drop=True)


def _normalised(scores: pd.Series) -> np.ndarray:
    """Scores min-max scaled to [0, 1] within the list, so they weigh against gains that live in [0, 1]."""
    values = scores.to_numpy(dtype=float)
    spread = values.max() - values.min()
    return (values - values.min()) / spread if spread > 0 else np.zeros_like(values)


Objective = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _greedy(n: int, k: int, objective: Objective) -> list[int]:
    """Positions picked one by one by highest objective(picked, available); ties to the lower position."""
    picked: list[int] = []
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        values = np.where(available, objective(np.asarray(picked, dtype=int), available), -np.inf)
        best = int(np.argmax(values))
        picked.append(best)
        available[best] = False
    return picked


def _rerank_each(lists: pd.DataFrame, k: int, order_one: Callable[[pd.DataFrame], Objective]) -> pd.DataFrame:
    """Each request's list re-ranked greedily and cut to k; `rank` becomes the new 1-based position."""
    if k < 1:
        raise ValueError(f"re-ranking: k must be at least 1, got {k}")
    ordered = _relevance_order(lists)
    pieces = []
    for _, one in ordered.groupby(REQUEST, sort=False):
        one = one.reset_index(drop=True)
        picked = _greedy(len(one), k, order_one(one))
        pieces.append(one.iloc[picked].assign(**{RANK: np.arange(1, len(picked) + 1, dtype=np.int32)}))
    if not pieces:
        return ordered.assign(**{RANK: pd.Series(dtype=np.int32)})
    return pd.concat(pieces, ignore_index=True)


def fair_rerank(
    lists: pd.DataFrame, policy: ProviderPolicy, *, lambda_: float, min_long_tail_share: float, k: int
) -> pd.DataFrame:
    """Each request's top k re-ranked for provider-exposure fairness, with a long-tail floor.

    Greedy objective for candidate i of provider p, given the items already placed in the list:
        (1 - lambda_) * relevance_i + lambda_ * need_p / (1 + items of p already placed)
    relevance is the score min-max scaled within the list, need_p the provider's need (see
    `ProviderPolicy`); the divisor stops one provider from filling the list.

    Guarantee (the proportional floor of FA*IR, Zehlike et al. 2017, without its significance test):
    for every prefix of length p of the returned top k, the number of items from long-tail providers is
    at least min(floor(min_long_tail_share * p), the number of long-tail candidates in the list). It
    holds because the floor rises by at most one per position, and whenever the prefix falls short the
    best remaining long-tail candidate is placed next.

    lambda_ = 0 with min_long_tail_share = 0 returns the relevance order unchanged. `lists` holds
    request_id, item_id, score (and optionally rank, the tie-break after score); every column is kept.
    """
    if not (0 <= lambda_ <= 1 and 0 <= min_long_tail_share <= 1):
        raise ValueError(
            f"fair_rerank: lambda_ and min_long_tail_share must be in [0, 1], "
            f"got {lambda_} and {min_long_tail_share}"
        )

    def order_one(one: pd.DataFrame) -> Objective:
        relevance = _normalised(one[SCORE])
        provider = one[ITEM].map(policy.item_provider)
        codes = pd.factorize(provider)[0]  # -1: no provider
        need = provider.map(policy.need).fillna(0.0).to_numpy(dtype=float)
        long_tail = provider.isin(policy.long_tail).to_numpy()

        def objective(picked: np.ndarray, available: np.ndarray) -> np.ndarray:
            placed = np.bincount(codes[picked] + 1, minlength=codes.max() + 2)[codes + 1]
            values = (1 - lambda_) * relevance + lambda_ * need / (1 + placed)
            floor = math.floor(min_long_tail_share * (len(picked) + 1) + _FLOOR_EPS)
            if long_tail[picked].sum() < floor and (long_tail & available).any():
                values = np.where(long_tail, values, -np.inf)
            return values

        return objective

    return _rerank_each(lists, k, order_one)


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
        relevance = _normalised(one[SCORE])
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

    return _rerank_each(lists, k, order_one)


MODEL_RANK = "model_rank"


def with_providers(items: pd.DataFrame, provider_attribute: str | None) -> pd.DataFrame:
    """The catalogue with `brand` set to each item's provider: its brand, or `attributes[provider_attribute]`.

    Data without brands (MovieLens) can name another attribute as the provider, e.g. the release year.
    """
    if provider_attribute is None:
        return items
    if "attributes" not in items.columns:
        raise ValueError(
            f"items: fairness.provider_attribute is '{provider_attribute}' but the items have no attributes "
            f"column; unset it to use brand as the provider"
        )
    providers = items["attributes"].map(lambda a: None if a is None else dict(a).get(provider_attribute))
    if providers.isna().all():
        raise ValueError(
            f"items: no item has the attribute '{provider_attribute}' named by fairness.provider_attribute"
        )
    return items.assign(brand=providers)


def fair_order(
    lists: pd.DataFrame,
    policy: ProviderPolicy,
    *,
    lambda_: float,
    min_long_tail_share: float,
    mmr_trade_off: float | None = None,
    item_category: pd.Series | None = None,
) -> pd.DataFrame:
    """Whole ranked lists re-ordered (no item dropped) by MMR diversity if asked, then provider fairness.

    `rank` becomes the new position; `model_rank` keeps the position the lists came in (the model order)
    and `score` the model score. With MMR on, the fairness pass weighs provider need against the
    diversified order (relevance = minus the MMR position) rather than the raw score, so the fairness
    pass comes last and its long-tail floor (`fair_rerank`) holds on the output either way.
    """
    ordered = lists.assign(**{MODEL_RANK: lists[RANK]})
    if ordered.empty:
        return ordered
    length = int(ordered.groupby(REQUEST).size().max())
    fairness = {"lambda_": lambda_, "min_long_tail_share": min_long_tail_share, "k": length}
    if mmr_trade_off is None:
        return fair_rerank(ordered, policy, **fairness)
    diversified = mmr_rerank(ordered, trade_off=mmr_trade_off, k=length, item_category=item_category)
    by_position = diversified.assign(_model_score=diversified[SCORE], **{SCORE: -diversified[RANK] * 1.0})
    fair = fair_rerank(by_position, policy, **fairness)
    return fair.assign(**{SCORE: fair["_model_score"]}).drop(columns="_model_score")


def list_reorderer(
    policy: ProviderPolicy,
    cfg: FairnessConfig,
    item_category: pd.Series | None = None,
    lambda_: float | None = None,
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """`fair_order` with the run's settings (lambda_ overrides cfg.weight in sweeps), over any lists."""
    if cfg.diversity and item_category is None:
        raise ValueError("fairness.diversity is on: pass the items' categories (item_id -> category)")

    def reorder(lists: pd.DataFrame) -> pd.DataFrame:
        return fair_order(
            lists,
            policy,
            lambda_=cfg.weight if lambda_ is None else lambda_,
            min_long_tail_share=cfg.min_long_tail_share,
            mmr_trade_off=cfg.mmr_trade_off if cfg.diversity else None,
            item_category=item_category,
        )

    return reorder
