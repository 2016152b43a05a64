"""Provider-fair re-ranking: boosts fitted so that exposure evens out across providers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmrank_spark.metrics import (
    ITEM,
    RANK,
    REQUEST,
    exposure_shares,
    share_held_above,
)
from llmrank_spark.postprocess.greedy import Objective, relevance_order, rerank_each, within_list_relevance

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


def long_tail_flags(one: pd.DataFrame, policy: ProviderPolicy) -> np.ndarray:
    """Per row of a list: whether its item's provider is in the long tail (no provider: not)."""
    return one[ITEM].map(policy.item_provider).isin(policy.long_tail).to_numpy()


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


# The boost fit: proportional-control rounds, and each round's step as a fraction of lambda per unit of
# relative exposure error; the sweeps in docs/results.md ran with these values.
_FIT_ROUNDS = 30
_FIT_STEP = 0.5


def provider_boosts(
    lists: pd.DataFrame, policy: ProviderPolicy, *, lambda_: float, k: int, keep_top: int = 0
) -> pd.Series:
    """provider -> boost in [-lambda_, lambda_] that evens out the run's top-k exposure across providers.

    Dual ascent on "every provider of the catalogue gets 1/n of the run's position-discounted top-k
    exposure": each round orders every list by within-list relevance plus its providers' boosts, measures
    each provider's exposure share E_p, and moves its boost by `_FIT_STEP * lambda_` times the relative
    error (1/n - E_p) * n clipped to [-1, 1], keeping it in [-lambda_, lambda_]. The boosts returned are
    the mean over the rounds (the averaged iterate of the subgradient method), which damps the
    oscillation a large lambda_ gives. Over-exposed providers sink, under-exposed ones that have
    candidates rise. The first `keep_top` positions of each list stay in relevance order in every round,
    as `fair_rerank` keeps them. The long-tail floor is left out of the fit (it moves few items), so each
    round is one vectorised sort.
    """
    if not 0 <= lambda_ <= 1:
        raise ValueError(f"provider_boosts: lambda_ must be in [0, 1], got {lambda_}")
    providers = policy.need.index
    boosts = pd.Series(0.0, index=providers)
    if lambda_ == 0 or lists.empty:
        return boosts
    lists = relevance_order(lists)
    provider = lists[ITEM].map(policy.item_provider)
    if provider.isna().all():
        return boosts  # no listed item has a provider: no boost can move any exposure
    fair_share = 1.0 / len(providers)
    # Relevance plus boost lies in [-1, 2]: a lift of 4 per kept position keeps those on top, in order.
    kept_lift = (keep_top - lists.groupby(REQUEST).cumcount()).clip(lower=0).to_numpy() * 4.0
    relevance = within_list_relevance(lists).to_numpy() + kept_lift
    tie_break = lists[RANK] if RANK in lists.columns else pd.Series(0, index=lists.index)
    history = []
    for _ in range(_FIT_ROUNDS):
        adjusted = relevance + provider.map(boosts).fillna(0.0).to_numpy()
        ordered = lists[[REQUEST, ITEM]].assign(_adjusted=adjusted, _tie=tie_break.to_numpy())
        ordered = ordered.sort_values(
            [REQUEST, "_adjusted", "_tie", ITEM], ascending=[True, False, True, True], kind="mergesort"
        )
        ordered[RANK] = ordered.groupby(REQUEST).cumcount() + 1
        # The evaluate step's own metric, so the fit evens out exactly what the run reports.
        share = exposure_shares(ordered, policy.item_provider, k, groups=providers).reindex(providers)
        error = ((fair_share - share) / fair_share).clip(-1.0, 1.0)
        boosts = (boosts + _FIT_STEP * lambda_ * error).clip(-lambda_, lambda_)
        history.append(boosts)
    return pd.concat(history, axis=1).mean(axis=1)


def fair_rerank(
    lists: pd.DataFrame,
    policy: ProviderPolicy,
    *,
    min_long_tail_share: float,
    k: int,
    need_weight: float = 0.0,
    boosts: pd.Series | None = None,
    keep_top: int = 0,
) -> pd.DataFrame:
    """Each request's top k re-ranked for provider-exposure fairness, with a long-tail floor.

    Greedy: position by position, the remaining candidate i of provider p with the highest
        (1 - need_weight) * relevance_i + need_weight * need_p / (1 + items of p already placed) + boost_p
    is placed next. relevance is the score min-max scaled within the list (`within_list_relevance`),
    need_p the provider's need (`ProviderPolicy`; the divisor stops one provider from filling the list)
    and boost_p a run-level boost (`provider_boosts`; 0 for none). The "list" strategy uses need_weight
    alone, the "run" strategy boosts alone (`run_reorderer`). The first `keep_top` positions are kept in
    relevance order (the pass re-orders the rest): the model's best matches stay where it put them.

    Guarantees. (1) Bounded displacement: without need_weight and with boosts in [-lambda, lambda], an
    item is placed above one whose relevance exceeds its own by more than 2 lambda only when the floor
    forces it. (2) The proportional floor of FA*IR (Zehlike et al. 2017, without its significance test):
    every prefix of length p of the re-ordered positions (those after the kept top) holds at least
    min(floor(min_long_tail_share * p), the long-tail candidates not kept) items of long-tail
    providers. It holds because the floor rises by at most one per position, and whenever the prefix
    falls short the best remaining long-tail candidate is placed next.

    No need_weight, no boosts and min_long_tail_share = 0 (or keep_top >= k) return the relevance order
    unchanged. `lists` holds request_id, item_id, score (and optionally rank, the tie-break after
    score); every column is kept.
    """
    if not (0 <= need_weight <= 1 and 0 <= min_long_tail_share <= 1):
        raise ValueError(
            f"fair_rerank: need_weight and min_long_tail_share must be in [0, 1], "
            f"got {need_weight} and {min_long_tail_share}"
        )
    if keep_top < 0:
        raise ValueError(f"fair_rerank: keep_top must be at least 0, got {keep_top}")

    def order_one(one: pd.DataFrame) -> Objective:
        provider = one[ITEM].map(policy.item_provider)
        fixed = (1 - need_weight) * within_list_relevance(one).to_numpy()
        if boosts is not None:
            fixed = fixed + provider.map(boosts).fillna(0.0).to_numpy(dtype=float)
        codes = pd.factorize(provider)[0]  # -1: no provider
        need = need_weight * provider.map(policy.need).fillna(0.0).to_numpy(dtype=float)
        long_tail = long_tail_flags(one, policy)
        relevance_order = -np.arange(len(one), dtype=float)  # `one` comes best first

        def objective(picked: np.ndarray, available: np.ndarray) -> np.ndarray:
            if len(picked) < keep_top:
                return relevance_order
            values = fixed
            if need_weight > 0:
                placed = np.bincount(codes[picked] + 1, minlength=codes.max() + 2)[codes + 1]
                values = fixed + need / (1 + placed)
            floor = math.floor(min_long_tail_share * (len(picked) - keep_top + 1) + _FLOOR_EPS)
            if long_tail[picked[keep_top:]].sum() < floor and (long_tail & available).any():
                return np.where(long_tail, values, -np.inf)
            return values

        return objective

    return rerank_each(lists, k, order_one)


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
