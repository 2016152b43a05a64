"""Search queries as requests: checks on query texts, BM25 retrieval, query lists beside user lists."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from llmrank_spark.config import CandidatesConfig
from llmrank_spark.lakehouse import EMPTY_QUERY_TEXT, QUERY_TOO_LONG, frame_from_pandas
from llmrank_spark.retrieval import build_candidates
from llmrank_spark.retrieval.lexical import LexicalIndex
from llmrank_spark.retrieval.queries import check_queries

RUN_DATE = dt.date(2026, 11, 20)
N = 4
TITLES = {
    "i1": "Trailforge waterproof leather hiking boots",
    "i2": "Ridgeline cotton shirt",
    "i3": "Ridgeline linen shirt",
    "i4": "Alpenrock wool hiking socks",
    "i5": "Stride Lab running shoes",
    "i6": "防水登山靴 Trailforge",
}


def _index() -> LexicalIndex:
    # Built from shuffled rows: the index sorts by item_id itself.
    ids = np.array(["i5", "i2", "i6", "i1", "i4", "i3"], dtype=object)
    return LexicalIndex.build(ids, [TITLES[i] for i in ids])


def test_a_query_matching_one_item_exactly_finds_it_first():
    found = _index().top_items(["q"], ["Trailforge waterproof leather hiking boots"], depth=3)
    assert found["item_id"].iloc[0] == "i1"
    assert found["source_rank"].tolist() == list(range(1, len(found) + 1))
    assert found["source_score"].is_monotonic_decreasing


def test_lexical_retrieval_returns_only_items_sharing_a_word_and_orders_ties_by_item_id():
    found = _index().top_items(["shirts", "nothing"], ["cotton shirt", "zzz qqq"], depth=5)
    assert found["request_id"].unique().tolist() == ["shirts"]  # no shared word: no item, no error
    assert found["item_id"].tolist() == ["i2", "i3"]  # i2 has both words; i3 only "shirt"


def test_queries_in_other_scripts_pass_through_lexical_retrieval():
    found = _index().top_items(["zh", "mixed", "emoji"], ["登山靴", "Trailforge 防水 boots", "👟👟"], depth=3)
    assert found.loc[found.request_id == "zh", "item_id"].tolist() == ["i6"]  # shares its characters
    assert found.loc[found.request_id == "mixed", "item_id"].iloc[0] in {"i1", "i6"}
    assert "emoji" not in set(found.request_id)


def test_the_index_reads_back_what_it_saved(tmp_path):
    index = _index()
    index.save(tmp_path)
    again = LexicalIndex.load(tmp_path)
    query = (["q"], ["wool hiking socks"], 6)
    pd.testing.assert_frame_equal(again.top_items(*query), index.top_items(*query))


def test_empty_blank_and_overlong_queries_are_rejected_with_a_reason():
    queries = pd.DataFrame(
        {
            "query_id": ["ok", "empty", "blank", "null", "control", "long"],
            "query_text": ["  red\tshirt ", "", "   \t ", None, "\x00\x07", "boots " * 2000],
        }
    )
    checked = check_queries(queries, max_chars=500).set_index("request_id")
    assert checked.loc["ok", "query_text"] == "red shirt" and checked.loc["ok", "reason"] is None
    assert checked.loc[["empty", "blank", "null", "control"], "reason"].eq(EMPTY_QUERY_TEXT).all()
    assert checked.loc["long", "reason"] == QUERY_TOO_LONG
    assert "11999 characters" in checked.loc["long", "detail"]
    assert checked.loc[checked.reason.notna(), "query_text"].isna().all()  # a rejected text is never ranked


@pytest.fixture(scope="module")
def lists(spark):
    items = pd.DataFrame(
        {
            "item_id": list(TITLES),
            "title": list(TITLES.values()),
            "category": ["shoes", "shirts", "shirts", "socks", "shoes", "shoes"],
        }
    )
    base = dt.datetime(2026, 11, 1)
    events = pd.DataFrame(
        {
            "user_id": ["u0", "u0", "u1"],
            "item_id": ["i2", "i3", "i5"],
            "event_type": ["view", "view", "view"],
            "event_ts": [base, base + dt.timedelta(hours=1), base],
        }
    )
    # "u0" is also a query id: the two requests must stay apart.
    queries = pd.DataFrame(
        {
            "query_id": ["u0", "Q2", "Q3", "Q4"],
            "query_text": ["hiking boots", "linen shirt", " ", "x" * 10_000],
            "query_class": None,
        }
    )
    cfg = CandidatesConfig(n_per_request=N, als_rank=2, als_max_iter=2)
    built = build_candidates(
        spark,
        frame_from_pandas(spark, items, "items"),
        frame_from_pandas(spark, events, "interactions"),
        None,
        cfg,
        RUN_DATE,
        queries=frame_from_pandas(spark, queries, "queries"),
    )
    return built.candidates.toPandas(), built.rejects.toPandas()


def test_queries_get_lists_of_their_own_beside_users(lists):
    candidates, _ = lists
    sizes = candidates.groupby(["request_type", "request_id"]).size()
    assert sorted(sizes.index) == [("query", "Q2"), ("query", "u0"), ("user", "u0"), ("user", "u1")]
    assert (sizes == N).all()
    query_sources = set(candidates.loc[candidates.request_type == "query", "sources"].explode())
    user_sources = set(candidates.loc[candidates.request_type == "user", "sources"].explode())
    assert query_sources <= {"lexical", "query_semantic"}
    assert user_sources.isdisjoint({"lexical", "query_semantic"})  # never mixed into one list
    boots = candidates[(candidates.request_type == "query") & (candidates.request_id == "u0")]
    assert boots.sort_values("retrieval_rank")["item_id"].iloc[0] == "i1"
    user_u0 = candidates[(candidates.request_type == "user") & (candidates.request_id == "u0")]
    assert user_u0.retrieval_rank.sort_values().tolist() == list(range(1, N + 1))


def test_queries_that_cannot_be_ranked_are_rejected_not_dropped(lists):
    candidates, rejects = lists
    refused = rejects[rejects.request_type == "query"].set_index("request_id")
    assert refused.loc["Q3", "reason"] == EMPTY_QUERY_TEXT
    assert refused.loc["Q4", "reason"] == QUERY_TOO_LONG
    assert (refused.input_table == "queries").all() and (refused.step == "candidates").all()
    assert not set(candidates.request_id) & {"Q3", "Q4"}
