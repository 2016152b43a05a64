"""Ranking quality, exposure fairness and diversity of ranked lists: the pure core of the evaluate step.

Every function reads ranked lists in long form, one row per (request_id, item_id) with a 1-based
``rank``, and graded labels as (request_id, item_id, relevance). They are grouped pandas/numpy
operations, never per-row Python loops, so the evaluate step can collect a night's lists (a few
hundred thousand rows) to the driver or run them per partition. Per-request metrics return a Series
indexed by request_id; their mean is the run's value. `evaluate_lists` produces the long
(metric, slice, value) rows of the ``metrics`` table.

Conventions, so numbers are comparable across runs and steps:
- an item is relevant when its relevance is > 0; unjudged items count as relevance 0;
- quality is measured over the requests that were ranked AND have at least one relevant label;
- the position discount is 1 / log2(1 + rank), both in DCG and in exposure;
- NDCG uses linear gain (as ``sklearn.metrics.ndcg_score``), the ideal list drawn from all labels.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

REQUEST, ITEM, RANK, RELEVANCE = "request_id", "item_id", "rank", "relevance"
HEAD, MID, TAIL = "head", "mid", "tail"
METRIC_COLUMNS = ["metric", "slice", "value"]


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing} (has {list(frame.columns)}); add or rename them")


def check_lists(ranked: pd.DataFrame) -> None:
    """Fail, naming the request, unless every list holds each item once at ranks exactly 1..n.

    Precision-at-rank and coverage-style counts are only right on such lists; lists cut by a filter
    must be renumbered first (e.g. ``groupby(request_id).rank.rank(method="first")``).
    """
    _require(ranked, [REQUEST, ITEM, RANK], "ranked lists")
    duplicated = ranked.duplicated([REQUEST, ITEM])
    if duplicated.any():
        row = ranked[duplicated].iloc[0]
        raise ValueError(
            f"ranked lists: item '{row[ITEM]}' appears more than once in request '{row[REQUEST]}'; "
            f"deduplicate the list"
        )
    shape = ranked.groupby(REQUEST)[RANK].agg(["min", "max", "size", "nunique"])
    bad = shape[(shape["min"] != 1) | (shape["max"] != shape["size"]) | (shape["nunique"] != shape["size"])]
    if len(bad):
        request, row = next(iter(bad.iterrows()))
        raise ValueError(
            f"ranked lists: request '{request}' has ranks {row['min']}..{row['max']} over {row['size']} "
            f"items, not 1..n; renumber its ranks"
        )


def check_labels(labels: pd.DataFrame) -> None:
    _require(labels, [REQUEST, ITEM, RELEVANCE], "labels")
    if labels.duplicated([REQUEST, ITEM]).any():
        row = labels[labels.duplicated([REQUEST, ITEM])].iloc[0]
        raise ValueError(f"labels: request '{row[REQUEST]}' judges item '{row[ITEM]}' twice; keep one label")
    relevance = labels[RELEVANCE].to_numpy(dtype=float)
    if not np.all(np.isfinite(relevance) & (relevance >= 0)):
        raise ValueError("labels: relevance must be a finite number >= 0 (0 = irrelevant); fix the labels")


def top_k(ranked: pd.DataFrame, k: int | None) -> pd.DataFrame:
    return ranked if k is None else ranked[ranked[RANK] <= k]


def position_discount(rank: pd.Series | np.ndarray) -> np.ndarray:
    """1 / log2(1 + rank): the attention a position gets, shared by DCG and exposure."""
    return 1.0 / np.log2(1.0 + np.asarray(rank, dtype=float))


def _judged(
    ranked: pd.DataFrame, labels: pd.DataFrame, k: int | None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Index]:
    """Top-k rows with their relevance, the labels, and the evaluated request ids (see the module doc)."""
    check_lists(ranked)
    check_labels(labels)
    relevant_requests = labels.loc[labels[RELEVANCE] > 0, REQUEST].unique()
    evaluated = pd.Index(ranked[REQUEST].unique(), name=REQUEST).intersection(relevant_requests)
    lists = top_k(ranked, k)
    judged = lists.loc[lists[REQUEST].isin(evaluated), [REQUEST, ITEM, RANK]].merge(
        labels[[REQUEST, ITEM, RELEVANCE]], on=[REQUEST, ITEM], how="left"
    )
    judged[RELEVANCE] = judged[RELEVANCE].fillna(0.0).astype(float)
    return judged, labels[labels[REQUEST].isin(evaluated)], evaluated


def _per_request(values: pd.Series, evaluated: pd.Index) -> pd.Series:
    """Values for every evaluated request: a request with no hit scores 0, not missing."""
    return values.reindex(evaluated, fill_value=0.0).astype(float)


def ndcg_at_k(ranked: pd.DataFrame, labels: pd.DataFrame, k: int) -> pd.Series:
    """NDCG@k per request: DCG of the list's top k over the DCG of the best possible top k of its labels."""
    judged, request_labels, evaluated = _judged(ranked, labels, k)
    dcg = (judged[RELEVANCE] * position_discount(judged[RANK])).groupby(judged[REQUEST]).sum()
    ideal = request_labels.sort_values([REQUEST, RELEVANCE], ascending=[True, False])
    ideal_rank = ideal.groupby(REQUEST).cumcount() + 1
    keep = ideal_rank <= k
    ideal = ideal[keep]
    idcg = (ideal[RELEVANCE] * position_discount(ideal_rank[keep])).groupby(ideal[REQUEST]).sum()
    return (_per_request(dcg, evaluated) / idcg.reindex(evaluated)).rename(f"ndcg@{k}")


def relative_change(
    baseline: pd.Series, other: pd.Series, *, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """(change, low, high): mean(other) / mean(baseline) - 1 over the requests both measured, and a
    bootstrap percentile interval for it (`scipy.stats.bootstrap`, seeded).

    Two orders of the same run judged on the same users differ by chance too: the interval says whether a
    change (say -1.5% NDCG) is more than which users happened to be evaluated. Requests are resampled
    with their pair of values, and the interval is that of the mean per-request difference over the
    baseline's mean, so a resample whose baseline is all zeros cannot make it undefined. NaNs when no
    request is in both or the baseline mean is 0.
    """
    paired = pd.concat([baseline.rename("b"), other.rename("o")], axis=1, join="inner").dropna()
    base = paired["b"].mean() if len(paired) else 0.0
    if base == 0:
        return (float("nan"),) * 3
    difference = (paired["o"] - paired["b"]).to_numpy(float)
    change = float(difference.mean() / base)
    if np.ptp(difference) == 0:  # every request moved alike: every resample gives the same change
        return change, change, change
    interval = bootstrap(
        (difference,),
        np.mean,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return change, float(interval.low / base), float(interval.high / base)


def mrr(ranked: pd.DataFrame, labels: pd.DataFrame, k: int | None = None) -> pd.Series:
    """Reciprocal rank of the first relevant item per request (0 when none is in the top k)."""
    judged, _, evaluated = _judged(ranked, labels, k)
    first_hit = judged[judged[RELEVANCE] > 0].groupby(REQUEST)[RANK].min()
    return _per_request(1.0 / first_hit, evaluated).rename("mrr" if k is None else f"mrr@{k}")


def recall_at_k(ranked: pd.DataFrame, labels: pd.DataFrame, k: int) -> pd.Series:
    """Share of each request's relevant items that made its top k."""
    judged, request_labels, evaluated = _judged(ranked, labels, k)
    hits = judged[judged[RELEVANCE] > 0].groupby(REQUEST).size()
    relevant = request_labels[request_labels[RELEVANCE] > 0].groupby(REQUEST).size()
    return (_per_request(hits, evaluated) / relevant.reindex(evaluated)).rename(f"recall@{k}")


def average_precision(ranked: pd.DataFrame, labels: pd.DataFrame, k: int | None = None) -> pd.Series:
    """AP per request: precision@rank summed over the relevant items in the top k, over min(#relevant, k).

    Dividing by min(#relevant, k) (not #relevant) lets a perfect top k score 1 when a request has more
    relevant items than fit; MAP is the mean over requests.
    """
    judged, request_labels, evaluated = _judged(ranked, labels, k)
    hits = judged[judged[RELEVANCE] > 0].sort_values([REQUEST, RANK])
    precision_at_hit = (hits.groupby(REQUEST).cumcount() + 1) / hits[RANK]
    relevant = request_labels[request_labels[RELEVANCE] > 0].groupby(REQUEST).size()
    if k is not None:
        relevant = relevant.clip(upper=k)
    summed = precision_at_hit.groupby(hits[REQUEST]).sum()
    return (_per_request(summed, evaluated) / relevant.reindex(evaluated)).rename(
        "map" if k is None else f"map@{k}"
    )


def exposure_shares(
    ranked: pd.DataFrame, item_group: pd.Series, k: int | None = None, groups: Iterable[str] | None = None
) -> pd.Series:
    """Share of position-discounted exposure each group (provider, popularity bucket) gets; sums to 1.

    `item_group` maps item_id -> group; items without a group are left out. `groups` lists the groups
    that exist (e.g. every provider of the catalogue) so that unseen ones appear with share 0.
    """
    lists = top_k(ranked, k)
    group = lists[ITEM].map(item_group)
    exposure = pd.Series(position_discount(lists[RANK]), index=lists.index).groupby(group).sum()
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


Embeddings = Mapping[str, Sequence[float]] | pd.Series


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


def group_quality(per_request: pd.Series, request_group: pd.Series) -> tuple[pd.Series, float]:
    """Mean of a per-request metric in each group (request_id -> group) and the gap, max - min.

    Requests without a group (e.g. queries when grouping users) are left out.
    """
    groups = request_group.reindex(per_request.index)
    means = per_request.groupby(groups).mean()
    return means, float(means.max() - means.min()) if len(means) else float("nan")


def age_bands(age: pd.Series, edges: Sequence[int]) -> pd.Series:
    """Ages cut into bands labelled '<18', '18-24', ..., '56+' at the given ascending edges."""
    if list(edges) != sorted(set(edges)) or not len(edges):
        raise ValueError(f"age band edges must be ascending and distinct, got {list(edges)}")
    labels = [f"<{edges[0]}"] + [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)]
    labels.append(f"{edges[-1]}+")
    bins = [-np.inf, *edges, np.inf]
    return pd.cut(age, bins=bins, labels=labels, right=False).astype(object)


def user_groups(
    users: pd.DataFrame, attributes: Sequence[str], age_band_edges: Sequence[int]
) -> dict[str, pd.Series]:
    """attribute -> (user_id -> group) from the users table; 'age_band' is derived from age."""
    _require(users, ["user_id"], "users")
    indexed = users.set_index("user_id")
    groups = {}
    for attribute in attributes:
        if attribute == "age_band":
            _require(users, ["age"], "users (for age_band)")
            groups[attribute] = age_bands(indexed["age"], age_band_edges)
        else:
            _require(users, [attribute], "users (group attribute)")
            groups[attribute] = indexed[attribute]
        groups[attribute] = groups[attribute].dropna().astype(str)
    return groups


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


def evaluate_lists(
    ranked: pd.DataFrame,
    items: pd.DataFrame,
    *,
    ks: Sequence[int] = (10,),
    labels: pd.DataFrame | None = None,
    item_popularity: pd.Series | None = None,
    popularity_split: tuple[float, float] = (0.2, 0.2),
    long_tail_providers: Collection[str] | None = None,
    embeddings: Embeddings | None = None,
    request_groups: Mapping[str, pd.Series] | None = None,
) -> pd.DataFrame:
    """The ``metrics`` rows (metric, slice, value) of one set of ranked lists; step and date are added later.

    `items` is the items table (item_id, category, brand: the provider). Each optional input switches
    on the metrics that need it: `labels` the quality metrics (also per user group with
    `request_groups`, attribute -> (request_id -> group)), `item_popularity` (item_id -> interactions)
    exposure by popularity bucket, `long_tail_providers` the long-tail exposure share, `embeddings`
    the embedding diversity. Metrics that cannot be measured (no evaluated request) are left out.
    """
    check_lists(ranked)
    _require(items, [ITEM, "category"], "items")
    if items[ITEM].duplicated().any():
        twice = items.loc[items[ITEM].duplicated(), ITEM].iloc[0]
        raise ValueError(f"items: item_id '{twice}' appears more than once; deduplicate the catalogue")
    catalogue = items.set_index(ITEM)
    providers = catalogue["brand"].dropna() if "brand" in catalogue else pd.Series(dtype=object)
    buckets = (
        None
        if item_popularity is None
        else popularity_buckets(
            item_popularity.reindex(catalogue.index.union(item_popularity.index), fill_value=0),
            *popularity_split,
        )
    )
    rows: list[tuple[str, str, float]] = []
    for k in ks:
        if labels is not None:
            rows += _quality_rows(ranked, labels, k, request_groups or {})
        rows.append((f"coverage@{k}", "all", catalogue_coverage(ranked, catalogue.index, k)))
        if len(providers):
            shares = exposure_shares(ranked, providers, k, groups=providers.unique())
            rows += [(f"exposure@{k}", f"provider={p}", s) for p, s in shares.items()]
            rows.append((f"provider_gini@{k}", "all", gini(shares)))
            if long_tail_providers is not None:
                long_tail = shares[shares.index.isin(list(long_tail_providers))].sum()
                rows.append((f"exposure@{k}", "provider_group=long_tail", long_tail))
        if buckets is not None:
            shares = exposure_shares(ranked, buckets, k, groups=[HEAD, MID, TAIL])
            rows += [(f"exposure@{k}", f"popularity={b}", s) for b, s in shares.items()]
        by_category = intra_list_diversity_by_category(ranked, catalogue["category"], k)
        rows.append((f"ild_category@{k}", "all", by_category.mean()))
        if embeddings is not None:
            by_embedding = intra_list_diversity_by_embedding(ranked, embeddings, k)
            rows.append((f"ild_embedding@{k}", "all", by_embedding.mean()))
    metrics = pd.DataFrame(rows, columns=METRIC_COLUMNS).astype({"value": float})
    return metrics.dropna(subset=["value"]).reset_index(drop=True)


def _quality_rows(
    ranked: pd.DataFrame, labels: pd.DataFrame, k: int, request_groups: Mapping[str, pd.Series]
) -> list[tuple[str, str, float]]:
    quality = [
        ndcg_at_k(ranked, labels, k),
        recall_at_k(ranked, labels, k),
        average_precision(ranked, labels, k),
        mrr(ranked, labels, k),
    ]
    rows = [(f"evaluated_requests@{k}", "all", float(len(quality[0])))]
    for per_request in quality:
        rows.append((per_request.name, "all", per_request.mean()))
        for attribute, groups in request_groups.items():
            means, gap = group_quality(per_request, groups)
            rows += [(per_request.name, f"{attribute}={g}", v) for g, v in means.items()]
            rows.append((f"{per_request.name}_gap", attribute, gap))
    return rows
