"""FA*IR (Zehlike et al. 2017) over the ranked lists, with the long-tail providers as the protected group.

The re-ranking is the authors' package, fairsearchcore (`fair_top_k`). Its prefix tables are computed
here: the package's own significance adjustment fails under numpy 2 (its cache keys hash numpy floats),
so `prefix_table` reimplements it, exactly, and tests/test_fairness_targets.py checks it against the
package's published tables.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from fairsearchcore.models import FairScoreDoc
from fairsearchcore.re_ranker import fair_top_k
from scipy.stats import binom

from llmrank_spark.metrics import REQUEST
from llmrank_spark.postprocess.fairness import ProviderPolicy, long_tail_flags
from llmrank_spark.postprocess.greedy import relevance_order, reorder_each

# The significance search stops when its two ends are this close (as the reference does).
_ALPHA_EPS = 1e-16


def unadjusted_table(length: int, proportion: float, alpha: float) -> np.ndarray:
    """m[i]: the fewest protected items among the first i + 1 that pass a one-sided binomial test at
    significance alpha (the alpha-quantile of Binomial(i + 1, proportion), at least 0)."""
    quantiles = binom.ppf(alpha, np.arange(1, length + 1), proportion)
    return np.maximum(np.nan_to_num(quantiles, nan=0.0), 0).astype(int)


def fail_probability(table: np.ndarray, proportion: float) -> float:
    """The probability that a list drawn by a fair coin of `proportion` falls below `table` in some prefix.

    Exact, by dynamic programming over the protected count: each position moves the count distribution
    one coin toss on, and the counts below that prefix's minimum are the lists that failed.
    """
    alive = np.zeros(len(table) + 1)
    alive[0] = 1.0
    for i, minimum in enumerate(table):
        tossed = alive * (1 - proportion)
        tossed[1:] += alive[:-1] * proportion
        tossed[: min(int(minimum), i + 2)] = 0.0
        alive = tossed
    return float(1.0 - alive.sum())


@functools.lru_cache(maxsize=256)
def prefix_table(length: int, proportion: float, alpha: float) -> tuple[int, ...]:
    """FA*IR's table for lists of `length`: testing every prefix at once, alpha is adjusted so that a fair
    list fails some prefix with probability alpha, not alpha per prefix.

    The adjustment bisects the per-prefix significance in [0, alpha] until the tables at its two ends
    differ by one protected item in all, and keeps the end whose failure probability is closest to alpha
    (the authors' procedure). Cached: one run asks for the same few lengths again and again.
    """
    if not 0 <= proportion <= 1:
        raise ValueError(f"FA*IR: the protected proportion must be in [0, 1], got {proportion}")
    if length < 1 or proportion == 0:
        return (0,) * length

    def at(significance: float) -> tuple[float, np.ndarray, float]:
        table = unadjusted_table(length, proportion, significance)
        return significance, table, fail_probability(table, proportion)

    low, high = at(0.0), at(alpha)
    middle = at(alpha / 2)
    while low[1].sum() < high[1].sum() and middle[2] != alpha:
        if middle[2] < alpha:
            low = middle
        else:
            high = middle
        middle = at((low[0] + high[0]) / 2)
        if high[1].sum() - low[1].sum() == 1 or high[0] - low[0] <= _ALPHA_EPS:
            closest = low if abs(low[2] - alpha) <= abs(high[2] - alpha) else high
            return tuple(int(m) for m in closest[1])
    return tuple(int(m) for m in middle[1])


def _fair_positions(protected: np.ndarray, table: tuple[int, ...]) -> list[int]:
    """FA*IR's order of one list best first: its positions, each prefix holding table's protected items."""
    docs = [FairScoreDoc(i, -i, bool(p)) for i, p in enumerate(protected)]  # score: minus the position
    picked = fair_top_k(
        len(docs), [d for d in docs if d.is_protected], [d for d in docs if not d.is_protected], list(table)
    )
    return [d.id for d in picked]


def meet_prefix_table(
    lists: pd.DataFrame, policy: ProviderPolicy, proportion: float, alpha: float, keep_top: int = 0
) -> pd.DataFrame:
    """Each list re-ordered by FA*IR: every prefix holds at least the long-tail items of the prefix table
    for its length (while long-tail candidates remain); otherwise the best item goes next, so the input
    order is kept as far as the table allows. `lists` are taken best first (`relevance_order`); the first
    `keep_top` rows of each stay; every column is kept."""
    if proportion == 0:
        return relevance_order(lists)
    return reorder_each(
        lists,
        lambda one: _fair_positions(long_tail_flags(one, policy), prefix_table(len(one), proportion, alpha)),
        keep_top,
    )


def prefix_guarantee_per_list(
    lists: pd.DataFrame, policy: ProviderPolicy, proportion: float, alpha: float
) -> pd.Series:
    """request_id -> whether the list (in `rank` order) holds, at every prefix i, min(m[i], the list's
    long-tail items) long-tail items, m the prefix table for the list's length: FA*IR's guarantee as far
    as the list's candidates allow it."""
    ordered = lists.sort_values([REQUEST, "rank"], kind="mergesort")
    flags = long_tail_flags(ordered, policy).astype(int)
    held = {}
    for request, positions in ordered.groupby(REQUEST, sort=False).indices.items():
        counts = np.cumsum(flags[positions])
        table = np.asarray(prefix_table(len(counts), proportion, alpha))
        held[request] = bool((counts >= np.minimum(table, counts[-1])).all())
    return pd.Series(held, dtype=bool, name="prefix_guarantee_held")


def prefix_guarantee_held(
    lists: pd.DataFrame, policy: ProviderPolicy, proportion: float, alpha: float
) -> float:
    """Share of lists that hold FA*IR's prefix guarantee (`prefix_guarantee_per_list`); 1 with no list."""
    if lists.empty:
        return 1.0
    return float(prefix_guarantee_per_list(lists, policy, proportion, alpha).mean())
