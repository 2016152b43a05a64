"""Ranking features: every (request, candidate) pair gets each feature, checked against a hand computation
on a small catalogue, for candidates no retriever proposed and items ALS never saw too."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from llmrank_spark.config import CandidatesConfig
from llmrank_spark.lakehouse import frame_from_pandas
from llmrank_spark.rerank import FEATURES, STALE_DAYS, feature_matrix, ranking_features_from
from llmrank_spark.retrieval import covisit_scores, prepare_inputs

RUN_DATE = dt.date(2026, 11, 20)
DAY = 86_400.0
CFG = CandidatesConfig(
    als_rank=2,
    als_max_iter=2,
    event_weights={"view": 1.0, "purchase": 4.0},
    popularity_half_life_days=10.0,
    history_half_life_days=20.0,
)


def _items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "title": ["red trail shoe", "blue trail shoe", "jazz record", "garden pot"],
            "category": ["shoes", "shoes", "music", "garden"],
            "brand": ["acme", "zeta", "acme", None],
            "price": [100.0, 50.0, 20.0, None],
        }
    )


def _events() -> pd.DataFrame:
    at = pd.Timestamp("2026-11-20 12:00:00")
    rows = [
        ("u1", "a", "view", at - pd.Timedelta(days=10)),
        ("u1", "c", "purchase", at - pd.Timedelta(days=10, hours=-1)),
        ("u1", "b", "view", at),
        ("u2", "a", "view", at - pd.Timedelta(days=5)),
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "event_ts"])


@pytest.fixture(scope="module")
def computed(spark):
    items = frame_from_pandas(spark, _items(), "items")
    events = frame_from_pandas(spark, _events(), "interactions")
    inputs = prepare_inputs(spark, items, events, None, CFG, RUN_DATE)
    pairs = spark.createDataFrame(
        pd.DataFrame(
            {
                "request_type": ["user", "user", "user", "query"],
                "request_id": ["u1", "u1", "u2", "u1"],
                "item_id": ["a", "d", "c", "a"],
                "retrieval_rank": [1, None, 2, 1],
            }
        ).astype({"retrieval_rank": "Int32"}),
        "request_type string, request_id string, item_id string, retrieval_rank int",
    )
    from pyspark.sql import functions as F

    pairs = pairs.withColumn(
        "source_ranks",
        F.when(F.col("item_id") == "a", F.create_map(F.lit("als"), F.lit(3))).otherwise(
            F.lit(None).cast("map<string,int>")
        ),
    )
    frame = ranking_features_from(pairs, inputs).toPandas()
    factors = inputs.als  # the very factors the features read
    covisit = covisit_scores(inputs).toPandas()
    return (
        frame.set_index(["request_type", "request_id", "item_id"]),
        factors.users.toPandas().set_index("user_id")["features"],
        factors.items.toPandas().set_index("item_id")["features"],
        covisit,
    )


def test_every_pair_gets_every_feature_defined_except_ranks_it_was_not_given(computed):
    frame, *_ = computed
    assert len(frame) == 4
    dense = frame[[f for f in FEATURES if not f.startswith(("rank_", "blend_rank"))]]
    assert not dense.isna().any().any()
    matrix = feature_matrix(frame.reset_index(), FEATURES)
    assert matrix.shape == (4, len(FEATURES))


def test_features_equal_a_hand_computation(computed):
    frame, user_factors, item_factors, covisit = computed
    u1a, u1d, u2c = (
        frame.loc[("user", "u1", "a")],
        frame.loc[("user", "u1", "d")],
        frame.loc[("user", "u2", "c")],
    )
    newest = pd.Timestamp("2026-11-20 12:00:00")

    def decayed(weight: float, at: pd.Timestamp, half_life: float, now: pd.Timestamp = newest) -> float:
        return weight * 0.5 ** ((now - at).total_seconds() / DAY / half_life)

    # popularity: log1p of the decayed weight of every event on the item.
    pop_a = decayed(1, newest - pd.Timedelta(days=10), 10) + decayed(1, newest - pd.Timedelta(days=5), 10)
    pop_b = decayed(1, newest, 10)
    assert u1a["popularity"] == pytest.approx(np.log1p(pop_a))
    assert u1a["category_share"] == pytest.approx(pop_a / (pop_a + pop_b))
    # d has no event: popularity 0, stale, no price; its category is no part of u1's history.
    assert (u1d["popularity"], u1d["category_share"], u1d["days_since_item_event"]) == (0.0, 0.0, STALE_DAYS)
    assert u1d["price_ratio"] == 0.0 and u1d["category_affinity"] == 0.0 and u1d["brand_affinity"] == 0.0
    assert u1a["days_since_item_event"] == pytest.approx(5.0)
    # u1's history weights, decayed from their own newest event (history_half_life_days 20).
    w_a = decayed(1, newest - pd.Timedelta(days=10), 20)
    w_c = decayed(4, newest - pd.Timedelta(days=10, hours=-1), 20)
    w_b = 1.0
    total = w_a + w_b + w_c
    assert u1a["category_affinity"] == pytest.approx((w_a + w_b) / total)
    assert u1a["brand_affinity"] == pytest.approx((w_a + w_c) / total)
    # u1's usual price is the median of a, b, c (approximate percentile over 3 values: 50).
    assert u1a["price_ratio"] == pytest.approx(np.log(100.0 / 50.0))
    # ALS: the dot product of the fitted factors; the ranks given, null where none was.
    expected_als = float(np.dot(user_factors["u1"], item_factors["a"]))
    assert u1a["als_score"] == pytest.approx(expected_als, rel=1e-5)
    assert u1a["rank_als"] == 3.0 and u1a["blend_rank"] == 1.0
    assert np.isnan(u1d["rank_als"]) and np.isnan(u1d["blend_rank"])
    # Co-visitation: the retriever's score of the pair, 0 where it has none.
    found = covisit[(covisit["request_id"] == "u2") & (covisit["item_id"] == "c")]["source_score"]
    assert u2c["covisit_score"] == pytest.approx(found.sum())


def test_a_candidate_unknown_to_als_and_a_query_get_defined_values(computed):
    frame, *_ = computed
    # d was never interacted with, so ALS has no factors for it: 0, not null.
    assert frame.loc[("user", "u1", "d")]["als_score"] == 0.0
    query = frame.loc[("query", "u1", "a")]
    user = frame.loc[("user", "u1", "a")]
    # A query shares the item features of a user request with the same id, never the user's.
    assert query["popularity"] == user["popularity"]
    for personal in ("als_score", "covisit_score", "text_similarity", "category_affinity", "brand_affinity"):
        assert query[personal] == 0.0
    assert user["text_similarity"] > 0.0
