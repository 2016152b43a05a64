"""Intra-list diversity, by category and by item text embedding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

import numpy as np
import pandas as pd

from llmrank_spark.metrics.lists import ITEM, REQUEST, top_k


def intra_list_diversity_by_category(
    ranked: pd.DataFrame, item_category: pd.Series, k: int | None = None
) -> pd.Series:
    """Per request, the share of distinct item pairs whose categories differ.

    Counted in closed form (1 - same-category pairs / all pairs) from per-category counts, so no pairs
    are materialised. Items without a category are left out; lists of fewer than 2 items have no value.
    """
    lists = top_k(ranked, k)
    category = lists[ITEM].map(item_category)
    known = lists[category.notna()].assign(category=category[category.notna()])
    per_category = known.groupby([REQUEST, "category"]).size()
    same = (per_category * (per_category - 1) / 2).groupby(level=REQUEST).sum()
    n = known.groupby(REQUEST).size()
    pairs = n * (n - 1) / 2
    return (1.0 - same[pairs > 0] / pairs[pairs > 0]).rename("ild_category")


Embeddings: TypeAlias = Mapping[str, Sequence[float]] | pd.Series


def unit_vectors(item_ids: Sequence[str], embeddings: Embeddings) -> np.ndarray:
    """Row i is item_ids[i]'s embedding scaled to length 1 (cosine similarity becomes a dot product)."""
    vectors = embeddings if isinstance(embeddings, pd.Series) else pd.Series(dict(embeddings))
    codes, unique_ids = pd.factorize(pd.Index(item_ids))
    missing = unique_ids.difference(vectors.index)
    if len(missing):
        raise ValueError(
            f"embeddings: no vector for {len(missing)} ranked items (e.g. {list(missing[:3])}); "
            f"embed every catalogue item before evaluating"
        )
    matrix = np.stack(vectors.loc[unique_ids].to_numpy()).astype(float)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(norms == 0):
        zero = list(unique_ids[norms[:, 0] == 0][:3])
        raise ValueError(f"embeddings: zero vectors for items {zero}; cosine distance is undefined for them")
    return (matrix / norms)[codes]


def intra_list_diversity_by_embedding(
    ranked: pd.DataFrame, embeddings: Embeddings, k: int | None = None
) -> pd.Series:
    """Per request, the mean cosine distance (1 - cosine similarity) over distinct item pairs.

    With unit vectors u, the sum of u_i . u_j over ordered pairs i != j is |sum u|^2 - n, so one grouped
    sum of vectors per list gives the mean without materialising the pairs.
    """
    lists = top_k(ranked, k)
    units = pd.DataFrame(unit_vectors(lists[ITEM].tolist(), embeddings), index=lists.index)
    summed = units.groupby(lists[REQUEST]).sum()
    n = lists.groupby(REQUEST).size().reindex(summed.index)
    mean_similarity = ((summed**2).sum(axis=1) - n) / (n * (n - 1))
    return (1.0 - mean_similarity[n > 1]).rename("ild_embedding")
