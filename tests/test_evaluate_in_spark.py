"""The evaluate step in Spark equals the pure per-list metrics; its interval is near the resampled one."""

import numpy as np
import pandas as pd
import pytest
from test_fairness import catalogue, random_lists

from llmrank_spark.config import EvaluateConfig, FairnessConfig
from llmrank_spark.evaluation import measure_run
from llmrank_spark.evaluation.bootstrap import poisson_weights, replicate_sums
from llmrank_spark.metrics import evaluate_lists, ndcg_at_k, relative_change, user_groups
from llmrank_spark.postprocess import provider_policy, run_reorderer

KS = (5, 10)


@pytest.fixture(scope="module")
def run():
    """A run of 60 shoppers' lists in three orders, with graded labels, user groups and item vectors."""
    rng = np.random.default_rng(5)
    items, popularity = catalogue(41)
    model = random_lists(41, items, popularity, n_requests=60).drop(columns="sources")
    fairness = FairnessConfig(mode="on", control="weight", weight=0.6, min_long_tail_share=0.3)
    policy = provider_policy(items, popularity, fairness.long_tail_head_share)
    fair = run_reorderer(policy, fairness, items.set_index("item_id")["category"], model_order=model)(model)
    worst_first = model.groupby("request_id")["score"].rank(method="first").astype(int)
    retrieval = model.assign(retrieval_rank=worst_first)
    labels = (
        model.groupby("request_id", group_keys=False)
        .apply(lambda one: one.sample(6, random_state=int(one.name[1:])))
        .assign(relevance=lambda f: rng.integers(0, 4, len(f)).astype(float))
    )[["request_id", "item_id", "relevance"]]
    users = pd.DataFrame(
        {
            "user_id": [f"r{r:02d}" for r in range(60)],
            "gender": rng.choice(["F", "M"], 60),
            "age": rng.integers(15, 70, 60),
        }
    )
    vectors = pd.Series(list(rng.normal(size=(len(items), 8))), index=items.item_id)
    return items, popularity, model, fair, retrieval, labels, users, vectors, fairness, policy


def test_spark_evaluate_equals_the_pure_per_list_metrics(spark, run):
    items, popularity, _, fair, retrieval, labels, users, vectors, fairness, policy = run
    evaluate = EvaluateConfig(ks=list(KS), user_group_attributes=["gender", "age_band"])
    keyed = {"request_id": "user\x1f" + fair.request_id}  # the step keys requests as one column
    ranked = spark.createDataFrame(
        fair.assign(**keyed, request_type="user", model_version="v1", fairness_strength=0.6)
    )
    metrics = measure_run(
        ranked,
        spark.createDataFrame(retrieval.assign(request_id="user\x1f" + retrieval.request_id)),
        items,
        popularity,
        evaluate,
        fairness,
        labels=spark.createDataFrame(labels.assign(request_id="user\x1f" + labels.request_id)),
        users=spark.createDataFrame(users),
        embeddings=spark.createDataFrame(
            pd.DataFrame({"item_id": vectors.index, "embedding": [list(v) for v in vectors]})
        ),
    )
    got = metrics.set_index(["step", "metric", "slice"]).value
    assert not got.index.duplicated().any()
    assert set(metrics.step) == {"candidates", "rerank", "fairness"}
    assert (metrics.model_version.isna() == (metrics.step == "candidates")).all()

    groups = user_groups(users, ["gender", "age_band"], evaluate.age_band_edges)
    orders = {
        "candidates": retrieval.assign(rank=retrieval.retrieval_rank),
        "rerank": fair.assign(rank=fair.model_rank),
        "fairness": fair,
    }
    compared = 0
    for step, lists in orders.items():
        expected = evaluate_lists(
            lists[["request_id", "item_id", "rank"]],
            items,
            ks=KS,
            labels=labels,
            item_popularity=popularity,
            long_tail_providers=policy.long_tail,
            embeddings=vectors,
            request_groups=groups,
        )
        for row in expected.itertuples():
            assert got[(step, row.metric, row.slice)] == pytest.approx(row.value, abs=1e-9), (step, row)
            compared += 1
        # Each order's NDCG change against the model order (and the served order's lift over retrieval):
        # the point value exactly, the interval near the resampling bootstrap's.
        comparisons = [("change", orders["rerank"])] if step != "rerank" else []
        comparisons += [("lift", orders["candidates"])] if step == "fairness" else []
        for what, baseline_lists in comparisons:
            for k in KS:
                baseline, other = ndcg_at_k(baseline_lists, labels, k), ndcg_at_k(lists, labels, k)
                change, low, high = relative_change(baseline, other)
                name = f"ndcg@{k}_{what}"
                assert got[(step, name, "all")] == pytest.approx(change, abs=1e-9)
                width = high - low
                assert got[(step, f"{name}_low", "all")] == pytest.approx(low, abs=0.2 * width)
                assert got[(step, f"{name}_high", "all")] == pytest.approx(high, abs=0.2 * width)
    assert compared > 150
    target_free = metrics[metrics.metric.str.startswith("target_")]
    assert target_free.empty, "control weight: no target rows"


def test_poisson_weights_depend_on_the_request_alone_and_average_one():
    hashes = np.array([3, -7, 2**62, 11], dtype=np.int64)
    weights = poisson_weights(hashes, 4000)
    assert weights.shape == (4, 4000) and (weights >= 0).all()
    assert np.array_equal(poisson_weights(hashes[::-1], 4000), weights[::-1]), "no dependence on order"
    assert abs(weights.mean() - 1.0) < 0.03 and abs(weights.var() - 1.0) < 0.06  # Poisson(1)
    # Sums per replicate over a split of the requests add up to those over all of them.
    pairs = pd.DataFrame({"hash": hashes, "baseline": [0.5, 0.2, 0.9, 0.1], "other": [0.6, 0.2, 0.7, 0.4]})
    whole = replicate_sums(pairs, 50)
    parts = (
        replicate_sums(pairs.iloc[:2], 50)[["weighted_difference", "weight"]]
        + replicate_sums(pairs.iloc[2:], 50)[["weighted_difference", "weight"]]
    )
    np.testing.assert_allclose(whole[["weighted_difference", "weight"]], parts)
