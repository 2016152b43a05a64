"""A user request and a query request with the same id stay two requests in every step that handles both.

Upstream teams often keep users and queries in one id space, so each test below gives a user and a query
the id "x1" with different lists and checks that no step merges them (duplicate keys, one interleaved
list) or lends one the other's labels, groups or context.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from test_ranking import EVENTS as RANKING_EVENTS
from test_ranking import ITEMS as RANKING_ITEMS
from tiny_reranker import TINY_VERSION, tiny_artifact

from llmrank_spark.config import AttributesConfig, RerankConfig, load_config
from llmrank_spark.evaluation import evaluate_tables
from llmrank_spark.explain import attribute_orders, orders_by_segment
from llmrank_spark.lakehouse import frame_from_pandas, read_table, write_table
from llmrank_spark.pipeline import steps

RUN_DATE = dt.date(2026, 11, 20)
KEY = ["request_type", "request_id"]
# The same id as a user (with history in RANKING_EVENTS as u1) and as a query, with different lists.
LISTS = {
    ("user", "x1"): ["i2", "i3", "i4", "i5", "i6"],
    ("query", "x1"): ["i0", "i1", "i7", "i5"],
    ("user", "u2"): ["i0", "i1", "i2"],
}
QUERIES = pd.DataFrame({"query_id": ["x1"], "query_text": ["warm hat for winter"], "query_class": ["Hats"]})


def _candidates() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "run_date": RUN_DATE,
                "request_type": kind,
                "request_id": request,
                "item_id": item,
                "retrieval_rank": rank,
                "retrieval_score": 1.0 / rank,
                "sources": ["als"],
                "source_ranks": {"als": rank},
                "source_scores": {"als": 1.0 / rank},
            }
            for (kind, request), items in LISTS.items()
            for rank, item in enumerate(items, start=1)
        ]
    )


def _ranked(model_version: str = TINY_VERSION) -> pd.DataFrame:
    ranked = _candidates().drop(columns=["source_ranks", "source_scores"])
    return ranked.assign(
        rank=ranked.retrieval_rank, model_rank=ranked.retrieval_rank, score=1.0, model_version=model_version
    )


def _assert_lists_kept_apart(frame: pd.DataFrame) -> None:
    """One list per full key, holding exactly that request's items, ranked 1..n in both orders."""
    assert not frame.duplicated([*KEY, "item_id"]).any()
    for (kind, request), items in LISTS.items():
        one = frame[(frame.request_type == kind) & (frame.request_id == request)]
        assert set(one.item_id) == set(items), (kind, request)
        for rank in ("rank", "model_rank"):
            assert sorted(one[rank]) == list(range(1, len(one) + 1)), (kind, request, rank)


@pytest.mark.parametrize(
    ("strategy", "control"), [("list", "weight"), ("run", "weight"), ("fa_ir", "target")]
)
def test_rerank_with_the_fairness_pass_keeps_a_user_and_a_query_of_one_id_apart(
    spark, tmp_path, strategy, control
):
    config = load_config(
        overrides=[
            f"lakehouse.root={tmp_path / 'lakehouse'}",
            f"run.run_date={RUN_DATE}",
            "rerank.mode=cross_encoder",
            f"rerank.model_path={tiny_artifact()}",
            "rerank.top_k=10",
            f"fairness.strategy={strategy}",
            f"fairness.control={control}",
            "fairness.weight=1.0",
            "fairness.min_long_tail_share=0.5",
        ]
    )
    events = RANKING_EVENTS.assign(user_id=RANKING_EVENTS.user_id.replace({"u1": "x1"}))
    for table, frame in {
        "items": RANKING_ITEMS,
        "interactions": events,
        "queries": QUERIES,
        "candidates": _candidates(),
    }.items():
        write_table(frame_from_pandas(spark, frame, table), config, table, RUN_DATE)

    steps.rerank(spark, config)

    ranked = read_table(spark, config, "ranked").toPandas()
    _assert_lists_kept_apart(ranked)
    assert read_table(spark, config, "rejects").count() == 0


def test_evaluate_measures_a_user_and_a_query_of_one_id_as_two_requests(spark):
    config = load_config(
        overrides=[f"run.run_date={RUN_DATE}", "evaluate.ks=[3]", "evaluate.embedding_diversity=false"]
    )
    items = RANKING_ITEMS.assign(brand=["Big"] * 4 + ["Small"] * 4)
    history = [("x1", f"i{n}", "purchase", "2026-11-10") for n in range(8)]
    # After the run: user x1 buys i2 (rank 1 of the user's list); the query's label is i7 (rank 3).
    labels = [("x1", "i2", "purchase", "2026-11-22")]
    interactions = pd.DataFrame(history + labels, columns=["user_id", "item_id", "event_type", "event_ts"])
    interactions = interactions.assign(event_ts=pd.to_datetime(interactions.event_ts))
    frames = {
        "ranked": _ranked(),
        "candidates": _candidates(),
        "items": items,
        "interactions": interactions,
        "users": pd.DataFrame({"user_id": ["x1"], "gender": ["F"]}),
        "query_labels": pd.DataFrame({"query_id": ["x1"], "item_id": ["i7"], "relevance": [3]}),
    }
    tables = {table: frame_from_pandas(spark, frame, table) for table, frame in frames.items()}

    metrics = evaluate_tables(tables, config).set_index(["step", "metric", "slice"]).value

    assert metrics[("rerank", "evaluated_requests@3", "all")] == 2
    query_ndcg = 3 / np.log2(4) / 3  # grade 3 at rank 3, ideal at rank 1
    assert metrics[("rerank", "ndcg@3", "all")] == pytest.approx(np.mean([1.0, query_ndcg]))
    # Only the user is in a gender group: the query of the same id lends it no result.
    assert metrics[("rerank", "ndcg@3", "gender=F")] == pytest.approx(1.0)


def test_attribute_orders_keep_a_user_and_a_query_of_one_id_apart(spark):
    ranked = frame_from_pandas(spark, _ranked(), "ranked")
    items = frame_from_pandas(spark, RANKING_ITEMS, "items")
    queries = frame_from_pandas(spark, QUERIES, "queries")
    users = frame_from_pandas(spark, pd.DataFrame({"user_id": ["x1"], "segment": ["outdoor"]}), "users")
    top = 3
    orders = attribute_orders(
        spark,
        ranked,
        items,
        frame_from_pandas(spark, RANKING_EVENTS, "interactions"),
        RerankConfig(mode="cross_encoder", model_path=str(tiny_artifact()), micro_batch_size=4),
        AttributesConfig(top_k_items=top, max_attributes=4),
        RUN_DATE,
        queries=queries,
        users=users,
    ).localCheckpoint()
    rows = orders.toPandas()

    assert not rows.duplicated([*KEY, "item_id", "attribute"]).any()
    # Every test item shows a brand or an attribute, so each of a list's top items gets an order.
    for (kind, request), listed in LISTS.items():
        one = rows[(rows.request_type == kind) & (rows.request_id == request)]
        assert set(one.item_id) == set(listed[:top]), (kind, request)

    segments = orders_by_segment(orders, items, users, queries).toPandas()
    support = segments.groupby(["segment_type", "segment"]).support.sum()
    user_x1 = (rows.request_type == "user") & (rows.request_id == "x1")
    assert support[("query_class", "Hats")] == (rows.request_type == "query").sum()
    assert support[("user_segment", "outdoor")] == user_x1.sum()
