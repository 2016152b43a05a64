"""Quality per group of requests (age bands, activity): the spread across groups."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from llmrank_spark.metrics.lists import require_columns


def group_quality(per_request: pd.Series, request_group: pd.Series) -> tuple[pd.Series, float]:
    """Mean of a per-request metric in each group (request_id -> group) and the gap, max - min.

    Requests without a group (e.g. queries when grouping users) are left out.
    """
    groups = request_group.reindex(per_request.index)
    means = per_request.groupby(groups).mean()
    return means, float(means.max() - means.min()) if len(means) else float("nan")


def age_bands(age: pd.Series, edges: Sequence[int]) -> pd.Series:
    """Ages cut into bands labelled '<18', '18-24', ..., '56+' at the given ascending edges."""
    bins = [-np.inf, *edges, np.inf]
    return pd.cut(age, bins=bins, labels=age_band_labels(edges), right=False).astype(object)


def age_band_labels(edges: Sequence[int]) -> list[str]:
    """The band labels of ages cut at `edges`: '<18', '18-24', ..., '56+' (one more than edges)."""
    if list(edges) != sorted(set(edges)) or not len(edges):
        raise ValueError(f"age band edges must be ascending and distinct, got {list(edges)}")
    labels = [f"<{edges[0]}"] + [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)]
    return [*labels, f"{edges[-1]}+"]


def user_groups(
    users: pd.DataFrame, attributes: Sequence[str], age_band_edges: Sequence[int]
) -> dict[str, pd.Series]:
    """attribute -> (user_id -> group) from the users table; 'age_band' is derived from age."""
    require_columns(users, ["user_id"], "users")
    indexed = users.set_index("user_id")
    groups = {}
    for attribute in attributes:
        if attribute == "age_band":
            require_columns(users, ["age"], "users (for age_band)")
            groups[attribute] = age_bands(indexed["age"], age_band_edges)
        else:
            require_columns(users, [attribute], "users (group attribute)")
            groups[attribute] = indexed[attribute]
        groups[attribute] = groups[attribute].dropna().astype(str)
    return groups
