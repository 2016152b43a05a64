"""Metrics checked against scikit-learn, brute-force loops over the same definitions and hand-worked cases."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score
from sklearn.metrics.pairwise import cosine_distances

from llmrank_spark.metrics import (
    age_bands,
    average_precision,
    catalogue_coverage,
    evaluate_lists,
    exposure_shares,
    gini,
    group_quality,
    intra_list_diversity_by_category,
    intra_list_diversity_by_embedding,
    mrr,
    ndcg_at_k,
    popularity_buckets,
    recall_at_k,
    relative_change,
    user_groups,
)

N_REQUESTS, UNIVERSE, LIST_LENGTH = 40, 20, 12


def random_case(seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    """Ranked lists (top LIST_LENGTH of UNIVERSE items by a random score), graded labels on a random
    subset of the universe (some requests with no relevant label), and each request's full score vector."""
    rng = np.random.default_rng(seed)
    ranked, labels, scores = [], [], {}
    for r in range(N_REQUESTS):
        request = f"r{r:02d}"
        score = rng.permutation(UNIVERSE).astype(float)  # distinct: sklearn averages tied gains
        scores[request] = score
        order = np.argsort(-score)[:LIST_LENGTH]
        ranked += [(request, f"i{i}", position + 1) for position, i in enumerate(order)]
        judged = rng.choice(UNIVERSE, size=rng.integers(0, UNIVERSE), replace=False)
        labels += [(request, f"i{i}", int(rng.integers(0, 4))) for i in judged]
    ranked = pd.DataFrame(ranked, columns=["request_id", "item_id", "rank"])
    labels = pd.DataFrame(labels, columns=["request_id", "item_id", "relevance"])
    return ranked, labels, scores


def evaluated_requests(labels: pd.DataFrame) -> list[str]:
    return sorted(labels.loc[labels.relevance > 0, "request_id"].unique())


def relevance_vector(labels: pd.DataFrame, request: str) -> np.ndarray:
    truth = np.zeros(UNIVERSE)
    own = labels[labels.request_id == request]
    truth[own.item_id.str[1:].astype(int).to_numpy()] = own.relevance.to_numpy()
    return truth


def brute_force(ranked: pd.DataFrame, labels: pd.DataFrame, request: str, k: int) -> dict[str, float]:
    """MRR, AP and recall by walking one list top-down, the textbook way."""
    relevance = dict(labels[labels.request_id == request][["item_id", "relevance"]].itertuples(index=False))
    n_relevant = sum(1 for v in relevance.values() if v > 0)
    items = ranked[ranked.request_id == request].sort_values("rank").item_id.tolist()[:k]
    hits, precision_sum, reciprocal = 0, 0.0, 0.0
    for position, item in enumerate(items, start=1):
        if relevance.get(item, 0) > 0:
            hits += 1
            precision_sum += hits / position
            reciprocal = reciprocal or 1 / position
    return {"mrr": reciprocal, "ap": precision_sum / min(n_relevant, k), "recall": hits / n_relevant}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 10, LIST_LENGTH])
def test_ndcg_matches_sklearn_on_random_lists(seed, k):
    ranked, labels, scores = random_case(seed)
    ours = ndcg_at_k(ranked, labels, k)
    requests = evaluated_requests(labels)
    assert sorted(ours.index) == requests
    for request in requests:
        expected = ndcg_score([relevance_vector(labels, request)], [scores[request]], k=k)
        assert ours[request] == pytest.approx(expected, abs=1e-12), request


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5, LIST_LENGTH])
def test_mrr_average_precision_recall_match_brute_force(seed, k):
    ranked, labels, _ = random_case(seed)
    computed = {"mrr": mrr(ranked, labels, k), "ap": average_precision(ranked, labels, k)}
    computed["recall"] = recall_at_k(ranked, labels, k)
    for request in evaluated_requests(labels):
        for name, value in brute_force(ranked, labels, request, k).items():
            assert computed[name][request] == pytest.approx(value, abs=1e-12), (name, request)


def small_case() -> tuple[pd.DataFrame, pd.DataFrame]:
    ranked = pd.DataFrame(
        {
            "request_id": ["q"] * 4 + ["u"] * 2 + ["none"] * 2,
            "item_id": ["a", "b", "c", "d", "x", "y", "a", "b"],
            "rank": [1, 2, 3, 4, 1, 2, 1, 2],
        }
    )
    labels = pd.DataFrame(
        {
            # q: b (3) and d (1) in its list, e (2) judged but not retrieved; u: nothing relevant in its list;
            # "none" has only a 0 label (not evaluated); "lost" was never ranked (not evaluated).
            "request_id": ["q", "q", "q", "q", "u", "u", "none", "lost"],
            "item_id": ["a", "b", "d", "e", "z", "x", "a", "a"],
            "relevance": [0, 3, 1, 2, 1, 0, 0, 2],
        }
    )
    return ranked, labels


def test_hand_computed_small_case():
    ranked, labels = small_case()
    dcg = 3 / math.log2(3) + 1 / math.log2(5)
    ideal = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, labels, 4).to_dict() == pytest.approx({"q": dcg / ideal, "u": 0.0})
    assert mrr(ranked, labels).to_dict() == pytest.approx({"q": 0.5, "u": 0.0})
    assert recall_at_k(ranked, labels, 2).to_dict() == pytest.approx({"q": 1 / 3, "u": 0.0})
    # q: hits at ranks 2 and 4 -> (1/2 + 2/4) / 3 relevant; at k = 2 the divisor is min(3, 2) = 2.
    assert average_precision(ranked, labels).to_dict() == pytest.approx({"q": 1 / 3, "u": 0.0})
    assert average_precision(ranked, labels, 2).to_dict() == pytest.approx({"q": 0.25, "u": 0.0})


def test_malformed_lists_and_labels_are_named():
    ranked, labels = small_case()
    with pytest.raises(ValueError, match="item 'a' appears more than once in request 'q'"):
        ndcg_at_k(pd.concat([ranked, ranked.iloc[[0]].assign(rank=5)]), labels, 3)
    with pytest.raises(ValueError, match=r"request 'u' has ranks 1\.\.3 over 2 items"):
        mrr(ranked.assign(rank=ranked["rank"].where(ranked.item_id != "y", 3)), labels)
    with pytest.raises(ValueError, match="judges item 'b' twice"):
        mrr(ranked, pd.concat([labels, labels.iloc[[1]]]))
    with pytest.raises(ValueError, match="relevance must be a finite number >= 0"):
        mrr(ranked, labels.assign(relevance=-1))
    with pytest.raises(ValueError, match=r"labels: missing columns \['relevance'\]"):
        mrr(ranked, labels.drop(columns="relevance"))


def test_gini_known_values_and_pairwise_definition():
    assert gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 7]) == pytest.approx(3 / 4)
    assert gini([0] * 9 + [1]) == pytest.approx(9 / 10)
    assert gini([0, 0]) == 0.0
    x = np.random.default_rng(3).exponential(size=57)
    pairwise = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
    assert gini(x) == pytest.approx(pairwise, abs=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        gini([1, -1])


def test_exposure_shares_discount_positions_and_sum_to_one():
    ranked, _ = small_case()
    provider = pd.Series({"a": "P", "b": "P", "c": "Q", "d": "Q", "x": "Q"})  # y has no provider
    shares = exposure_shares(ranked, provider, k=2, groups=["P", "Q", "R"])
    d1, d2 = 1.0, 1 / math.log2(3)
    total = (d1 + d2) + d1 + (d1 + d2)  # q: a, b -> P; u: x -> Q (y unknown); none: a, b -> P
    assert shares.to_dict() == pytest.approx({"P": 2 * (d1 + d2) / total, "Q": d1 / total, "R": 0.0})
    random_ranked, _, _ = random_case(4)
    random_provider = pd.Series({f"i{i}": f"p{i % 7}" for i in range(UNIVERSE)})
    assert exposure_shares(random_ranked, random_provider, 10).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no ranked item has a group"):
        exposure_shares(ranked, pd.Series({"zzz": "P"}))


def test_catalogue_coverage_counts_items_shown_in_any_top_k():
    ranked, _ = small_case()
    catalogue = ["a", "b", "c", "d", "e", "x", "y", "z"]
    assert catalogue_coverage(ranked, catalogue) == pytest.approx(6 / 8)
    assert catalogue_coverage(ranked, catalogue, k=1) == pytest.approx(2 / 8)


def test_intra_list_diversity_by_category_matches_pair_count():
    ranked, _ = small_case()
    category = pd.Series({"a": "shoes", "b": "shoes", "c": "hats", "d": "shoes", "x": "bags", "y": "hats"})
    diversity = intra_list_diversity_by_category(ranked, category)
    # q: a, b, d shoes + c hats -> 3 of 6 pairs differ; u: 1 of 1; none: a, b -> 0 of 1.
    assert diversity.to_dict() == pytest.approx({"q": 0.5, "u": 1.0, "none": 0.0})
    assert "none" not in intra_list_diversity_by_category(ranked, category, k=1)  # one item: no pairs


def test_intra_list_diversity_by_embedding_matches_pairwise_cosine():
    ranked, _, _ = random_case(5)
    rng = np.random.default_rng(5)
    embeddings = {f"i{i}": rng.normal(size=8) for i in range(UNIVERSE)}
    ours = intra_list_diversity_by_embedding(ranked, embeddings, k=6)
    for request, items in ranked[ranked["rank"] <= 6].groupby("request_id").item_id:
        distances = cosine_distances(np.stack([embeddings[i] for i in items]))
        expected = distances[np.triu_indices(len(items), 1)].mean()
        assert ours[request] == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match=r"no vector for 1 ranked items \(e.g. \['i3'\]\)"):
        intra_list_diversity_by_embedding(ranked, {k: v for k, v in embeddings.items() if k != "i3"})


def test_group_quality_means_and_gap():
    per_request = pd.Series({"u1": 1.0, "u2": 0.5, "u3": 0.0, "q1": 0.9})
    groups = pd.Series({"u1": "F", "u2": "F", "u3": "M", "u9": "M"})
    means, gap = group_quality(per_request, groups)
    assert means.to_dict() == pytest.approx({"F": 0.75, "M": 0.0})
    assert gap == pytest.approx(0.75)


def test_age_bands_and_user_groups():
    users = pd.DataFrame(
        {"user_id": ["1", "2", "3", "4"], "gender": ["F", "M", None, "F"], "age": [7, 18, 56, None]}
    )
    groups = user_groups(users, ["gender", "age_band"], [18, 25, 35, 45, 50, 56])
    assert groups["gender"].to_dict() == {"1": "F", "2": "M", "4": "F"}
    assert groups["age_band"].to_dict() == {"1": "<18", "2": "18-24", "3": "56+"}
    assert age_bands(pd.Series([24, 25, 49, 50]), [18, 25, 35, 45, 50, 56]).tolist() == [
        "18-24",
        "25-34",
        "45-49",
        "50-55",
    ]
    with pytest.raises(ValueError, match=r"users \(group attribute\): missing columns \['segment'\]"):
        user_groups(users, ["segment"], [18])


def test_popularity_buckets_split_by_interaction_share():
    counts = pd.Series({"a": 50, "b": 20, "c": 10, "d": 10, "e": 6, "f": 4, "g": 0})
    buckets = popularity_buckets(counts, head_share=0.2, tail_share=0.2)
    # Share held by more popular items: a 0, b .5, c .7, d .8, e .9, f .96, g 1.
    assert buckets.to_dict() == {
        "a": "head",
        "b": "mid",
        "c": "mid",
        "d": "tail",
        "e": "tail",
        "f": "tail",
        "g": "tail",
    }
    with pytest.raises(ValueError, match="head \\+ tail < 1"):
        popularity_buckets(counts, 0.6, 0.5)


def test_evaluate_lists_rows_agree_with_the_metric_functions():
    ranked, labels, _ = random_case(6)
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(UNIVERSE + 5)],
            "category": [f"c{i % 4}" for i in range(UNIVERSE + 5)],
            "brand": [f"b{i % 6}" if i % 5 else None for i in range(UNIVERSE + 5)],
        }
    )
    popularity = pd.Series({f"i{i}": UNIVERSE - i for i in range(UNIVERSE)})
    request_groups = {"gender": pd.Series({f"r{r:02d}": "FM"[r % 2] for r in range(N_REQUESTS)})}
    embeddings = {f"i{i}": np.eye(UNIVERSE + 5)[i % 3] for i in range(UNIVERSE + 5)}
    rows = evaluate_lists(
        ranked,
        items,
        ks=(5, 10),
        labels=labels,
        item_popularity=popularity,
        long_tail_providers={"b4", "b5"},
        embeddings=embeddings,
        request_groups=request_groups,
    )
    assert list(rows.columns) == ["metric", "slice", "value"]
    assert not rows.duplicated(["metric", "slice"]).any() and rows.value.notna().all()
    value = rows.set_index(["metric", "slice"]).value
    ndcg = ndcg_at_k(ranked, labels, 10)
    assert value["ndcg@10", "all"] == pytest.approx(ndcg.mean())
    assert value["map@5", "all"] == pytest.approx(average_precision(ranked, labels, 5).mean())
    assert value["evaluated_requests@10", "all"] == len(evaluated_requests(labels))
    women = [r for r in ndcg.index if int(r[1:]) % 2 == 0]
    assert value["ndcg@10", "gender=F"] == pytest.approx(ndcg[women].mean())
    assert value["ndcg@10_gap", "gender"] == pytest.approx(
        abs(value["ndcg@10", "gender=F"] - value["ndcg@10", "gender=M"])
    )
    provider_rows = value.xs("exposure@10", level="metric").filter(like="provider=")
    assert len(provider_rows) == 6 and provider_rows.sum() == pytest.approx(1.0)
    assert value["provider_gini@10", "all"] == pytest.approx(gini(provider_rows))
    assert value["exposure@10", "provider_group=long_tail"] == pytest.approx(
        provider_rows[["provider=b4", "provider=b5"]].sum()
    )
    buckets = value.xs("exposure@10", level="metric").filter(like="popularity=")
    assert sorted(buckets.index) == ["popularity=head", "popularity=mid", "popularity=tail"]
    assert buckets.sum() == pytest.approx(1.0)
    assert value["coverage@5", "all"] == pytest.approx(catalogue_coverage(ranked, items.item_id, 5))
    assert value["ild_embedding@10", "all"] == pytest.approx(
        intra_list_diversity_by_embedding(ranked, embeddings, 10).mean()
    )
    # Without labels or optional inputs only the catalogue metrics remain.
    bare = evaluate_lists(ranked, items.drop(columns="brand"), ks=(10,))
    assert sorted(bare.metric) == ["coverage@10", "ild_category@10"]


def test_relative_change_interval_matches_a_direct_paired_bootstrap():
    rng = np.random.default_rng(5)
    requests = [f"r{i:03d}" for i in range(400)]
    baseline = pd.Series(rng.uniform(0, 1, 400), index=requests)
    other = (baseline * 0.95 + rng.normal(0, 0.1, 400)).clip(lower=0)
    change, low, high = relative_change(baseline, other, resamples=5000, seed=1)
    assert change == pytest.approx(other.mean() / baseline.mean() - 1)
    # The textbook percentile bootstrap: resample requests with replacement, keeping each pair together,
    # the mean difference over the observed baseline mean.
    picks = rng.integers(0, 400, size=(20000, 400))
    difference = (other - baseline).to_numpy()[picks].mean(axis=1) / baseline.mean()
    reference_low, reference_high = np.percentile(difference, [2.5, 97.5])
    tolerance = 0.05 * (reference_high - reference_low)
    assert low == pytest.approx(reference_low, abs=tolerance)
    assert high == pytest.approx(reference_high, abs=tolerance)
    assert low < change < high
    # The interval is the same whatever order the requests arrive in (Spark gives no order).
    shuffled = rng.permutation(400)
    again = relative_change(baseline.iloc[shuffled], other.iloc[shuffled[::-1]], resamples=5000, seed=1)
    assert again == (change, low, high)


def test_relative_change_pairs_requests_and_names_what_it_cannot_measure():
    baseline = pd.Series({"a": 0.5, "b": 1.0, "c": 0.2})
    scaled = pd.Series({"a": 0.55, "b": 1.1, "c": 0.22, "d": 9.0})  # d has no baseline: left out
    change, low, high = relative_change(baseline, scaled)
    assert change == pytest.approx(0.1) and low < change < high
    shifted = baseline + 0.17  # every request moves alike: no spread to resample
    assert relative_change(baseline, shifted) == pytest.approx((0.3, 0.3, 0.3))
    assert relative_change(baseline, baseline) == (0.0, 0.0, 0.0)
    assert relative_change(baseline.head(1), scaled.head(1)) == pytest.approx((0.1, 0.1, 0.1))
    assert all(math.isnan(v) for v in relative_change(baseline * 0, scaled))
    assert all(math.isnan(v) for v in relative_change(baseline, pd.Series(dtype=float)))
