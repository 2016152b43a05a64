"""Training on search queries: the held-out split, the graded lists and the verdict on held-out queries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_training import cpu_scorer, tiny_with_head

from llmrank_spark.rerank import FusionHead, load_artifact
from llmrank_spark.training.champion import query_verdict
from llmrank_spark.training.network import FusionRanker
from llmrank_spark.training.query_lists import (
    heldout_queries,
    query_grades,
    sample_query_lists,
    served_query_lists,
)


def _labels() -> pd.DataFrame:
    """Two queries: q1 judges 12 items in grades 3, 2, 1, 0; q2 judges only grade-1 items."""
    q1 = pd.DataFrame(
        {
            "query_id": "q1",
            "item_id": [f"i{n:02d}" for n in range(12)],
            "relevance": [3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0, 0],
        }
    )
    q2 = pd.DataFrame({"query_id": "q2", "item_id": [f"i{n:02d}" for n in range(12)], "relevance": 1})
    return pd.concat([q1, q2], ignore_index=True)


def _candidates() -> pd.DataFrame:
    """q1's retrievers proposed i02..i07 and one item nobody judged; q2's proposed i00..i08."""
    q1 = ["i02", "i03", "i04", "i05", "i06", "i07", "unjudged"]
    q2 = [f"i{n:02d}" for n in range(9)]
    rows = [("q1", item, rank + 1) for rank, item in enumerate(q1)] + [
        ("q2", item, rank + 1) for rank, item in enumerate(q2)
    ]
    return pd.DataFrame(rows, columns=["request_id", "item_id", "retrieval_rank"])


def test_the_held_out_queries_are_a_stable_share_chosen_by_id():
    ids = pd.Series([f"Q{n:05d}" for n in range(4000)])
    heldout = heldout_queries(ids, 0.3)
    assert heldout.mean() == pytest.approx(0.3, abs=0.03)
    # The same query lands on the same side whatever else is in the table, and in whatever order.
    shuffled = ids.sample(frac=1.0, random_state=1)
    assert heldout_queries(shuffled, 0.3).to_numpy().tolist() == heldout.reindex(shuffled.index).tolist()
    assert heldout_queries(ids.iloc[:10], 0.3).tolist() == heldout.iloc[:10].tolist()


def test_query_lists_hold_a_best_item_retrieved_and_missed_items_and_unjudged_as_zero():
    graded = query_grades(_labels())
    assert graded["label"].max() == 1.0 and set(graded["label"]) == {0.0, 1 / 3, 2 / 3, 1.0}
    lists = sample_query_lists(graded, _candidates(), 8, np.random.default_rng(0))

    # q2's judged items share one grade: nothing to learn, no list.
    assert lists["query_id"].unique().tolist() == ["q1"]
    q1 = lists[lists["query_id"] == "q1"]
    assert len(q1) == 8 and q1["item_id"].is_unique and q1["list_id"].unique().tolist() == ["query:q1"]
    # First one of the best-graded items, then half the places from the retrieved list, the rest from
    # judged items no retriever proposed.
    assert q1["item_id"].iloc[0] in {"i00", "i01"} and q1["label"].iloc[0] == 1.0
    retrieved = set(_candidates().query("request_id == 'q1'")["item_id"])
    assert q1["item_id"].iloc[1:].isin(retrieved).sum() == 4
    grade = graded.query("query_id == 'q1'").set_index("item_id")["label"]
    assert q1.apply(lambda row: grade.get(row["item_id"], 0.0) == row["label"], axis=1).all()


def test_served_query_lists_are_whole_candidate_lists_in_retrieval_order():
    lists = served_query_lists(query_grades(_labels()), _candidates())
    q1 = lists[lists["query_id"] == "q1"]
    assert q1["item_id"].tolist() == ["i02", "i03", "i04", "i05", "i06", "i07", "unjudged"]
    assert q1["label"].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, 0.0])


def _heldout(n_queries: int, best_retrieved_last: bool) -> pd.DataFrame:
    """Held-out lists whose relevant item has the best BM25 feature; retrieval puts it last or first."""
    rows = []
    for q in range(n_queries):
        for position in range(4):
            relevant = position == (3 if best_retrieved_last else 0)
            rows.append(
                {
                    "list_id": f"query:q{q}",
                    "item_id": f"i{q}-{position}",
                    "label": 1.0 if relevant else 0.0,
                    "retrieval_rank": position + 1,
                    "context_text": f"query {q}",
                    "item_text": f"item {position}",
                    "source_ranks": {"lexical": 1 if relevant else 10},
                    "item_events": 0,
                }
            )
    return pd.DataFrame(rows)


def test_a_version_ranks_queries_only_if_it_beats_their_retrieval_order_on_held_out_queries(tmp_path):
    # The head trusts the lexical rank far above the logit, so the version puts each relevant item first.
    head = FusionHead(
        features=["lexical", "item_events"], logit_weight=0.0, feature_weights=[10.0, 0.0], bias=0.0
    )
    artifact = load_artifact(tiny_with_head(tmp_path / "fused", head))
    model = FusionRanker(artifact.model, head.features, head)
    scorer = cpu_scorer(model, artifact.tokenizer)

    better = query_verdict(model, scorer, _heldout(20, best_retrieved_last=True))
    assert better.promoted and better.requests == 20
    assert better.retrieval_ndcg == pytest.approx(1 / np.log2(5)) and better.version_ndcg == pytest.approx(
        1.0
    )

    same = query_verdict(model, scorer, _heldout(20, best_retrieved_last=False))
    assert not same.promoted and "beyond chance" in same.reason
