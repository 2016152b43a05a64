"""Post-processing re-rankers over ranked lists: provider-exposure fairness and MMR diversity.

Fairness has two strategies (`fairness.strategy`), both greedy over each list under a FA*IR-style
long-tail floor (`fair_rerank`), so Spark runs them per request in ``applyInPandas`` and the result does
not depend on the order lists arrive in:

- "list": each list on its own weighs relevance against its providers' need (how much of the catalogue's
  interactions more popular providers hold), with diminishing returns for a provider already placed.
- "run": exposure adds up across lists, so one boost per provider, in [-lambda, lambda], is fitted on the
  run's model-order lists (all of them, or a hashed sample of requests) to move the run's
  position-discounted top-k exposure towards an equal share per provider (`provider_boosts`); each list
  is then ordered by relevance plus boosts.

Neither dominates: on MovieLens (year cohorts as providers) "run" cuts provider Gini four times as much
for the same NDCG, on the sample (brands) "list" does (docs/benchmarks.md, "Fairness sweep").
MMR diversity is a per-list greedy pass too.

No maintained library offers exposure-targeted or FA*IR-style constrained re-ranking or MMR over pandas
lists (the FA*IR authors' code is an unmaintained research package), so these loops are written here."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmrank_spark.config import FairnessConfig
from llmrank_spark.metrics import (
    ITEM,
    RANK,
    REQUEST,
    Embeddings,
    exposure_shares,
    share_held_above,
    unit_vectors,
)

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


# The boost fit: proportional-control rounds, and each round's step as a fraction of lambda per unit of
# relative exposure error; the sweeps in docs/benchmarks.md ran with these values.
_FIT_ROUNDS = 30
_FIT_STEP = 0.5


def within_list_relevance(lists: pd.DataFrame) -> pd.Series:
    """Each row's score min-max scaled to [0, 1] within its request's list (0 for a list of equal scores),
    so one boost means the same share of a list's score range in every list."""
    by_request = lists.groupby(REQUEST)[SCORE]
    low, spread = by_request.transform("min"), by_request.transform("max") - by_request.transform("min")
    return ((lists[SCORE] - low) / spread.where(spread > 0)).fillna(0.0)


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
    lists = _relevance_order(lists)
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
        long_tail = provider.isin(policy.long_tail).to_numpy()
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
