"""DetConstSort (Geyik et al. 2019, LinkedIn Talent Search) over the ranked lists: the long tail and the
head as two attribute values, with the long tail's desired share as the strength.

The algorithm is the `reranking` package's implementation, not ours: it is the reference our own pass
is measured against (bench/fairness_targets.py).
"""

from __future__ import annotations

import warnings

import pandas as pd
import reranking

from llmrank_spark.postprocess.fairness import ProviderPolicy, long_tail_flags
from llmrank_spark.postprocess.greedy import relevance_order, reorder_each

LONG_TAIL, HEAD = "long_tail", "head"


def _positions(flags: list[bool], share: float) -> list[int]:
    if len(flags) < 2:
        return list(range(len(flags)))
    # A head share of 0 would make its loop wait forever once the long tail runs out: keep one slot's worth.
    share = min(share, 1 - 1 / len(flags))
    attributes = [LONG_TAIL if flag else HEAD for flag in flags]
    with warnings.catch_warnings():
        # pandas deprecations inside the package (groupby.apply on grouping columns, factorize of a list).
        warnings.simplefilter("ignore", FutureWarning)
        order = reranking.rerank(
            attributes, {LONG_TAIL: share, HEAD: 1 - share}, k_max=len(flags), algorithm="det_const_sort"
        )
    return [int(i) for i in order]


def det_const_sort_rerank(
    lists: pd.DataFrame, policy: ProviderPolicy, share: float, keep_top: int = 0
) -> pd.DataFrame:
    """Each list (best first) re-ordered by DetConstSort towards `share` long-tail items in every prefix.

    DetConstSort inserts an item of a group each time the group's minimum floor(share * i) rises, then
    lets it rise past less relevant items while that keeps earlier minimums; the two groups' items can
    push each other down, so a prefix may hold one item fewer than its minimum (the paper's guarantee is
    on the whole list's distribution, not each prefix). A share of 0 keeps the relevance order.
    """
    if not 0 <= share <= 1:
        raise ValueError(f"DetConstSort: the long tail's share must be in [0, 1], got {share}")
    if share == 0:
        return relevance_order(lists)
    return reorder_each(lists, lambda one: _positions(list(long_tail_flags(one, policy)), share), keep_top)
