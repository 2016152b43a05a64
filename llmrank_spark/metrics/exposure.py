"""Exposure metrics: position-discounted shares per provider, their Gini, coverage, popularity buckets."""

from __future__ import annotations

from collections.abc import Collection, Iterable

import numpy as np
import pandas as pd

from llmrank_spark.metrics.lists import ITEM, RANK, position_discount, top_k

HEAD, MID, TAIL = "head", "mid", "tail"


def exposure_shares(
    ranked: pd.DataFrame, item_group: pd.Series, k: int | None = None, groups: Iterable[str] | None = None
) -> pd.Series:
    """Share of position-discounted exposure each group (provider, popularity bucket) gets; sums to 1.

    `item_group` maps item_id -> group; items without a group are left out. `groups` lists the groups
    that exist (e.g. every provider of the catalogue) so that unseen ones appear with share 0.
    """
    lists = top_k(ranked, k)
    group = lists[ITEM].map(item_group)
    return shares_of(
        pd.Series(position_discount(lists[RANK]), index=lists.index).groupby(group).sum(), groups
    )


def shares_of(exposure: pd.Series, groups: Iterable[str] | None = None) -> pd.Series:
    """Exposure summed per group (group -> amount) as shares that sum to 1; the `groups` that got none
    appear with share 0. The evaluate step sums the exposure in Spark and shares it here."""
    if groups is not None:
        exposure = exposure.reindex(exposure.index.union(pd.Index(list(groups))), fill_value=0.0)
    total = exposure.sum()
    if total <= 0:
        raise ValueError(
            "exposure: no ranked item has a group in the item -> group mapping; check that its index "
            "holds the item ids of the ranked lists"
        )
    return (exposure / total).rename("exposure_share")


def gini(values: Iterable[float]) -> float:
    """Gini coefficient of non-negative amounts: 0 when all are equal, (n-1)/n when one holder has it all.

    Written by hand (numpy and scikit-learn have none): the sorted-values form of
    sum_ij |x_i - x_j| / (2 n^2 mean).
    """
    x = np.sort(np.asarray(list(values), dtype=float))
    if x.size == 0 or np.any(~np.isfinite(x)) or np.any(x < 0):
        raise ValueError("gini: needs at least one finite, non-negative amount")
    if x.sum() == 0:
        return 0.0
    n = x.size
    return float(2.0 * np.sum(np.arange(1, n + 1) * x) / (n * x.sum()) - (n + 1) / n)


def catalogue_coverage(ranked: pd.DataFrame, catalogue: Collection[str], k: int | None = None) -> float:
    """Share of the catalogue's items shown in at least one top-k list."""
    if not len(catalogue):
        raise ValueError("catalogue coverage: the catalogue is empty; pass the item ids of the items table")
    shown = pd.Index(top_k(ranked, k)[ITEM].unique())
    return float(shown.isin(pd.Index(catalogue)).sum() / len(pd.Index(catalogue).unique()))


def share_held_above(counts: pd.Series) -> pd.Series:
    """For each member (item or provider), the share of all interactions held by members more popular.

    The most popular member gets 0, the least popular nearly 1; equal counts are ordered by name so the
    split is deterministic. Both popularity buckets and the long-tail provider group cut this value.
    """
    values = counts.astype(float)
    if values.empty or (values < 0).any() or values.sum() <= 0:
        raise ValueError("popularity counts must be non-negative with a positive total; pass interactions")
    order = values.rename_axis("member").reset_index(name="count")
    order = order.sort_values(["count", "member"], ascending=[False, True], kind="mergesort")
    above = (order["count"].cumsum() - order["count"]) / values.sum()
    return pd.Series(above.to_numpy(), index=pd.Index(order["member"].to_numpy(), name=counts.index.name))


def popularity_buckets(item_counts: pd.Series, head_share: float, tail_share: float) -> pd.Series:
    """item_id -> 'head' / 'mid' / 'tail' by interaction share (Abdollahpouri et al., 2019).

    Head: the most popular items that together hold the first `head_share` of interactions. Tail: the
    least popular items holding the last `tail_share` (items with no interactions are tail). Mid: the rest.
    """
    if not (head_share > 0 and tail_share > 0 and head_share + tail_share < 1):
        raise ValueError(
            f"popularity shares need head > 0, tail > 0, head + tail < 1; got {head_share}, {tail_share}"
        )
    above = share_held_above(item_counts)
    buckets = np.select([above < head_share, above >= 1 - tail_share], [HEAD, TAIL], MID)
    return pd.Series(buckets, index=above.index, name="popularity_bucket")
