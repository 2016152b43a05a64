"""The evaluate step's per-request values: a pure function over one group of whole lists, run in Spark.

Every metric the step averages over requests (quality at each k, intra-list diversity, FA*IR's prefix
guarantee) is computed here per request, by the same pure `metrics` functions `evaluate_lists` uses;
Spark then averages them per slice. A group holds whole lists (all the run's orders of some requests)
and those requests' labels, so nothing here ever sees more than one group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmrank_spark.metrics import (
    ITEM,
    QUALITY_METRICS,
    REQUEST,
    intra_list_diversity_by_category,
    intra_list_diversity_by_embedding,
)
from llmrank_spark.metrics.lists import check_lists
from llmrank_spark.postprocess import ProviderPolicy, prefix_guarantee_per_list

STEP, METRIC, VALUE = "step", "metric", "value"
REQUEST_VALUES_SCHEMA = "step string, request_id string, metric string, value double"
PREFIX_HELD = "prefix_guarantee_held"


@dataclass(frozen=True)
class PrefixCheck:
    """FA*IR's prefix guarantee, checked per list of the given steps (`fairness.target.prefix_share`)."""

    steps: frozenset[str]
    policy: ProviderPolicy
    share: float
    alpha: float


def request_values(
    lists: pd.DataFrame,
    labels: pd.DataFrame | None,
    ks: Sequence[int],
    *,
    embedding: str | None = None,
    prefix: PrefixCheck | None = None,
) -> pd.DataFrame:
    """(step, request_id, metric, value) for every order (`step`) of the given whole lists.

    `lists` has step, request_id, item_id, rank and category (null: none), and with `embedding` that
    column holding each item's text vector. `labels` (request_id, item_id, relevance) switch on the
    quality metrics; a request is measured for quality only when it has a relevant label.
    """
    frames = []
    for step, one_order in lists.groupby(STEP, sort=True):
        order = one_order.drop(columns=STEP).reset_index(drop=True)
        check_lists(order)
        per_item = order.drop_duplicates(ITEM).set_index(ITEM)
        category = per_item["category"].dropna()
        # An item without a vector (none in the table, not in the catalogue) is left out here, so that
        # `unit_vectors` names it instead of failing on a null.
        vectors = None if embedding is None else per_item[embedding].dropna()
        values: list[pd.Series] = []
        for k in ks:
            if labels is not None:
                values += [metric(order, labels, k) for metric in QUALITY_METRICS]
            values.append(intra_list_diversity_by_category(order, category, k).rename(f"ild_category@{k}"))
            if vectors is not None:
                by_embedding = intra_list_diversity_by_embedding(order, vectors, k)
                values.append(by_embedding.rename(f"ild_embedding@{k}"))
        if prefix is not None and step in prefix.steps:
            held = prefix_guarantee_per_list(order, prefix.policy, prefix.share, prefix.alpha)
            values.append(held.astype(float).rename(PREFIX_HELD))
        for series in values:
            if len(series):
                frames.append(
                    pd.DataFrame(
                        {
                            STEP: step,
                            REQUEST: series.index.astype(str),
                            METRIC: series.name,
                            VALUE: series.to_numpy(dtype=float),
                        }
                    )
                )
    if not frames:
        return pd.DataFrame({STEP: [], REQUEST: [], METRIC: [], VALUE: np.array([], dtype=float)})
    return pd.concat(frames, ignore_index=True)
