"""Fairness and diversity re-ranking: both strategies, the FA*IR-style floor, bounded moves."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from llmrank_spark.metrics import exposure_shares, gini
from llmrank_spark.postprocess import (
    ProviderPolicy,
    fair_rerank,
    mmr_rerank,
    provider_boosts,
    provider_policy,
    within_list_relevance,
)

N_ITEMS, N_PROVIDERS = 120, 15


def catalogue(seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """Items with Zipf-like provider sizes and popularity: a few providers hold most interactions."""
    rng = np.random.default_rng(seed)
    provider_of = np.minimum(rng.zipf(1.6, size=N_ITEMS) - 1, N_PROVIDERS - 1)
    items = pd.DataFrame(
        {
            "item_id": [f"i{i:03d}" for i in range(N_ITEMS)],
            "brand": [f"p{p:02d}" for p in provider_of],
            "category": [f"c{i % 5}" for i in range(N_ITEMS)],
        }
    )
    popularity = pd.Series(rng.poisson(200 / (1 + provider_of)), index=items.item_id)
    return items, popularity


def random_lists(seed: int, items: pd.DataFrame, popularity: pd.Series, n_requests: int = 25) -> pd.DataFrame:
    """Per request 40 candidates whose scores lean towards popular items, with some exact score ties."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_requests):
        chosen = rng.choice(N_ITEMS, size=40, replace=False)
        bias = np.log1p(popularity.iloc[chosen].to_numpy())
        score = np.round(bias + rng.normal(scale=1.0, size=40), 1)
        rows.append(
            pd.DataFrame({"request_id": f"r{r:02d}", "item_id": items.item_id.iloc[chosen], "score": score})
        )
    lists = pd.concat(rows, ignore_index=True)
    lists["rank"] = (
        lists.sort_values(["score", "item_id"], ascending=[False, True]).groupby("request_id").cumcount() + 1
    ).astype("int32")
    lists["sources"] = [["als"]] * len(lists)
    return lists.sort_values(["request_id", "rank"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def case() -> tuple[pd.DataFrame, ProviderPolicy]:
    items, popularity = catalogue(11)
    return random_lists(11, items, popularity), provider_policy(items, popularity, head_share=0.6)


def test_provider_policy_long_tail_is_outside_the_top_providers_holding_the_head_share():
    items = pd.DataFrame(
        {
            "item_id": ["a1", "a2", "b1", "c1", "d1", "x1"],
            "brand": ["A", "A", "B", "C", "D", None],
        }
    )
    popularity = pd.Series({"a1": 40, "a2": 20, "b1": 25, "c1": 15, "x1": 99})  # d1 never interacted with
    policy = provider_policy(items, popularity, head_share=0.6)
    # Provider totals A 60, B 25, C 15, D 0 of 100: A alone holds 60%, so B, C and D are the long tail.
    assert policy.need.to_dict() == pytest.approx({"A": 0.0, "B": 0.6, "C": 0.85, "D": 1.0})
    assert policy.long_tail == {"B", "C", "D"}
    assert "x1" not in policy.item_provider.index
    assert provider_policy(items, popularity, head_share=0.61).long_tail == {"C", "D"}


def no_boosts(policy: ProviderPolicy) -> pd.Series:
    return pd.Series(0.0, index=policy.need.index)


def test_lambda_zero_without_floor_returns_the_relevance_order(case):
    lists, policy = case
    assert (provider_boosts(lists, policy, lambda_=0.0, k=10) == 0).all()
    reranked = fair_rerank(lists, policy, boosts=no_boosts(policy), min_long_tail_share=0.0, k=10)
    expected = lists[lists["rank"] <= 10].reset_index(drop=True)
    pd.testing.assert_frame_equal(reranked, expected)


def count_floor(share: float, prefix: int) -> int:
    """floor(share * prefix) in exact rational arithmetic, independent of the implementation's float guard."""
    return math.floor(Fraction(str(share)) * prefix)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("lambda_", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("share", [0.1, 0.29, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("strategy", ["list", "run"])
@pytest.mark.parametrize("keep_top", [0, 3])
def test_kept_top_stays_and_every_later_prefix_holds_the_long_tail_floor(
    seed, lambda_, share, strategy, keep_top
):
    items, popularity = catalogue(seed)
    policy = provider_policy(items, popularity, head_share=0.5)
    lists = random_lists(seed, items, popularity)
    k = 15
    if strategy == "list":
        weights = {"need_weight": lambda_}
    else:
        weights = {"boosts": provider_boosts(lists, policy, lambda_=lambda_, k=10, keep_top=keep_top)}
    reranked = fair_rerank(lists, policy, min_long_tail_share=share, k=k, keep_top=keep_top, **weights)
    for request, candidates in lists.groupby("request_id"):
        placed = reranked[reranked.request_id == request].sort_values("rank")
        assert placed["rank"].tolist() == list(range(1, k + 1))
        assert set(placed.item_id) <= set(candidates.item_id)
        # random_lists ranks by score, then item_id: the relevance order.
        kept = candidates.sort_values("rank").item_id.head(keep_top).tolist()
        assert placed.item_id.head(keep_top).tolist() == kept
        is_long_tail = (
            candidates.item_id.map(policy.item_provider).isin(policy.long_tail).set_axis(candidates.item_id)
        )
        available = is_long_tail.drop(kept).sum()
        long_tail = placed.item_id.iloc[keep_top:].map(is_long_tail).cumsum().to_numpy()
        for prefix in range(1, k - keep_top + 1):
            assert long_tail[prefix - 1] >= min(count_floor(share, prefix), available), (request, prefix)


def test_keep_top_of_the_whole_cut_returns_the_relevance_order(case):
    lists, policy = case
    reranked = fair_rerank(lists, policy, need_weight=1.0, min_long_tail_share=1.0, k=10, keep_top=10)
    expected = lists[lists["rank"] <= 10].reset_index(drop=True)
    pd.testing.assert_frame_equal(reranked, expected)


def test_floor_is_exact_where_floating_point_undershoots():
    # 0.58 * 50 is 28.999999999999996 in floating point; the floor of the exact product is 29.
    items = [f"i{i:02d}" for i in range(60)]
    policy = ProviderPolicy(
        item_provider=pd.Series([("tail" if i >= 30 else "head") for i in range(60)], index=items),
        need=pd.Series({"head": 0.0, "tail": 0.9}),
        long_tail=frozenset({"tail"}),
    )
    lists = pd.DataFrame({"request_id": "r", "item_id": items, "score": np.arange(60, 0, -1.0)})
    reranked = fair_rerank(lists, policy, boosts=no_boosts(policy), min_long_tail_share=0.58, k=50)
    assert (reranked.item_id.map(policy.item_provider) == "tail").sum() == 29


def test_list_strategy_a_provider_already_placed_gains_less_the_next_time():
    policy = ProviderPolicy(
        item_provider=pd.Series({"a1": "A", "a2": "A", "a3": "A", "b1": "B"}),
        need=pd.Series({"A": 1.0, "B": 0.8}),
        long_tail=frozenset({"A", "B"}),
    )
    lists = pd.DataFrame(
        {"request_id": "r", "item_id": ["a1", "a2", "a3", "b1"], "score": [4.0, 3.0, 2.0, 1.0]}
    )
    # With need_weight 1 only the need counts: a1 gets 1; then a2 gets 1 / 2 while b1 still gets 0.8.
    reranked = fair_rerank(lists, policy, need_weight=1.0, min_long_tail_share=0.0, k=4)
    assert reranked.item_id.tolist() == ["a1", "b1", "a2", "a3"]


def long_tail_exposure(reranked: pd.DataFrame, policy: ProviderPolicy) -> float:
    shares = exposure_shares(reranked, policy.item_provider, k=10, groups=policy.need.index)
    return float(shares[shares.index.isin(policy.long_tail)].sum())


def test_list_strategy_higher_need_weight_never_lowers_long_tail_exposure_and_lowers_gini(case):
    lists, policy = case
    exposures, ginis = [], []
    for weight in np.linspace(0, 1, 11):
        reranked = fair_rerank(lists, policy, need_weight=weight, min_long_tail_share=0.0, k=10)
        exposures.append(long_tail_exposure(reranked, policy))
        ginis.append(provider_gini(reranked, policy))
    assert all(later >= earlier - 1e-12 for earlier, later in itertools.pairwise(exposures))
    assert exposures[-1] > exposures[0]
    assert ginis[-1] < ginis[0]


def provider_gini(reranked: pd.DataFrame, policy: ProviderPolicy) -> float:
    return gini(exposure_shares(reranked, policy.item_provider, k=10, groups=policy.need.index))


def test_boosts_are_bounded_and_sink_the_most_exposed_provider(case):
    lists, policy = case
    model_order = exposure_shares(lists, policy.item_provider, k=10, groups=policy.need.index)
    for lambda_ in (0.1, 0.4, 1.0):
        boosts = provider_boosts(lists, policy, lambda_=lambda_, k=10)
        assert boosts.between(-lambda_, lambda_).all()
        assert boosts[model_order.idxmax()] < 0 < boosts[model_order[model_order > 0].idxmin()]


def test_boosts_do_not_depend_on_the_order_rows_arrive_in(case):
    lists, policy = case
    shuffled = lists.sample(frac=1.0, random_state=3)
    in_order, shuffled_boosts = (provider_boosts(f, policy, lambda_=0.3, k=10) for f in (lists, shuffled))
    pd.testing.assert_series_equal(in_order, shuffled_boosts)


def test_higher_lambda_evens_out_provider_exposure(case):
    lists, policy = case
    ginis = [
        provider_gini(
            fair_rerank(
                lists,
                policy,
                boosts=provider_boosts(lists, policy, lambda_=lambda_, k=10),
                min_long_tail_share=0.0,
                k=10,
            ),
            policy,
        )
        for lambda_ in (0.0, 0.2, 0.5, 1.0)
    ]
    assert ginis[0] > ginis[1] > ginis[2] >= ginis[3] - 1e-9


@pytest.mark.parametrize("lambda_", [0.05, 0.2, 0.5])
def test_no_item_jumps_one_more_relevant_by_over_twice_lambda(case, lambda_):
    lists, policy = case
    boosts = provider_boosts(lists, policy, lambda_=lambda_, k=10)
    reranked = fair_rerank(lists, policy, boosts=boosts, min_long_tail_share=0.0, k=40)
    reranked = reranked.assign(relevance=within_list_relevance(reranked))
    for _, one in reranked.groupby("request_id"):
        relevance = one.sort_values("rank").relevance.to_numpy()
        # Every item placed above a later one is at most 2 lambda less relevant than it.
        best_below = np.maximum.accumulate(relevance[::-1])[::-1]
        assert (best_below[1:] - relevance[:-1] <= 2 * lambda_ + 1e-12).all()


def test_rerank_keeps_columns_and_cuts_to_k_or_the_list(case):
    lists, policy = case
    boosts = provider_boosts(lists, policy, lambda_=0.5, k=10)
    reranked = fair_rerank(lists, policy, boosts=boosts, min_long_tail_share=0.2, k=100)
    assert list(reranked.columns) == list(lists.columns) and reranked["rank"].dtype == np.int32
    assert reranked.groupby("request_id").size().eq(40).all()
    merged = reranked.merge(lists, on=["request_id", "item_id"], suffixes=("", "_before"))
    assert len(merged) == len(lists) and (merged.score == merged.score_before).all()


def test_invalid_arguments_are_named(case):
    lists, policy = case
    no_boost = no_boosts(policy)
    with pytest.raises(ValueError, match="lambda_ must be in \\[0, 1\\]"):
        provider_boosts(lists, policy, lambda_=1.5, k=10)
    with pytest.raises(ValueError, match="keep_top must be at least 0, got -1"):
        fair_rerank(lists, policy, min_long_tail_share=0.2, k=10, keep_top=-1)
    with pytest.raises(ValueError, match="need_weight and min_long_tail_share must be in \\[0, 1\\]"):
        fair_rerank(lists, policy, boosts=no_boosts(policy), min_long_tail_share=1.5, k=10)
    with pytest.raises(ValueError, match="lack columns \\['score'\\]"):
        fair_rerank(lists.drop(columns="score"), policy, boosts=no_boost, min_long_tail_share=0, k=10)
    with pytest.raises(ValueError, match="k must be at least 1"):
        mmr_rerank(lists, trade_off=0.5, k=0, item_category=pd.Series(dtype=object))
    with pytest.raises(ValueError, match="exactly one of item_category or embeddings"):
        mmr_rerank(lists, trade_off=0.5, k=5)


def test_mmr_with_trade_off_one_is_the_relevance_order(case):
    lists, _ = case
    category = pd.Series({f"i{i:03d}": f"c{i % 3}" for i in range(N_ITEMS)})
    embeddings = {f"i{i:03d}": np.random.default_rng(i).normal(size=4) for i in range(N_ITEMS)}
    expected = lists[lists["rank"] <= 12].reset_index(drop=True)
    pd.testing.assert_frame_equal(mmr_rerank(lists, trade_off=1.0, k=12, item_category=category), expected)
    pd.testing.assert_frame_equal(mmr_rerank(lists, trade_off=1.0, k=12, embeddings=embeddings), expected)


def test_mmr_spreads_categories_and_embeddings():
    lists = pd.DataFrame(
        {"request_id": "r", "item_id": ["a1", "a2", "b1", "c1"], "score": [1.0, 0.9, 0.5, 0.0]}
    )
    category = pd.Series({"a1": "A", "a2": "A", "b1": "B"})  # c1 has no category: similar to nothing
    # Relevance scaled to 1, .9, .5, 0. With trade-off .5: after a1, a2 scores .45 - .5 < b1's .25.
    by_category = mmr_rerank(lists, trade_off=0.5, k=4, item_category=category)
    assert by_category.item_id.tolist() == ["a1", "b1", "c1", "a2"]
    embeddings = {"a1": [1.0, 0.0], "a2": [1.0, 0.1], "b1": [0.0, 1.0], "c1": [-1.0, 0.0]}
    # After a1: c1 points away from it (cosine -1), 0 + .5 beats b1's .25 - 0 and a2's .45 - .5 * .995.
    by_embedding = mmr_rerank(lists, trade_off=0.5, k=3, embeddings=embeddings)
    assert by_embedding.item_id.tolist() == ["a1", "c1", "b1"]
