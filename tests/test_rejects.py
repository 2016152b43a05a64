"""The rerank step's rules for bad candidate rows and texts, on pandas frames (no Spark)."""

from pathlib import Path

import numpy as np
import pandas as pd

from llmrank_spark.config import RerankConfig
from llmrank_spark.lakehouse import CHECKED_COLUMNS, COPY_OF, REASONS, check_pairs, mark_copies
from llmrank_spark.text import NEW_SHOPPER_CONTEXT, clean_text, item_text_frame

RELIABILITY_DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


def pairs(rows: list[dict]) -> pd.DataFrame:
    defaults = {
        "request_id": "u1",
        "request_type": "user",
        "retrieval_score": 1.0,
        "sources": np.array(["als"], dtype=object),
        "source_ranks": {"als": 1},
        "in_catalogue": True,
        "item_text": "Trail Runner. Brand: Acme.",
        "context_found": True,
        "context_text": "Recently viewed: Red Shoe",
        COPY_OF: None,
    }
    return pd.DataFrame([{**defaults, **row} for row in rows])


def test_each_bad_pair_gets_its_reason_and_good_pairs_none():
    checked = check_pairs(
        pairs(
            [
                {"item_id": "ok", "retrieval_rank": 1},
                {"item_id": "dup", "retrieval_rank": 5, "retrieval_score": 0.2, COPY_OF: "2"},
                {"item_id": "dup", "retrieval_rank": 2, "retrieval_score": 0.9},
                {"item_id": "gone", "retrieval_rank": 3, "in_catalogue": None, "item_text": None},
                {"item_id": "blank", "retrieval_rank": 4, "item_text": None},
            ]
        )
    )
    assert list(checked.columns) == list(CHECKED_COLUMNS)
    by_item = checked.assign(reason=checked.reason.fillna("scored")).groupby("item_id")["reason"].agg(list)
    assert by_item.to_dict() == {
        "blank": ["empty_item_text"],
        "dup": ["duplicate_candidate", "scored"],
        "gone": ["item_not_in_catalogue"],
        "ok": ["scored"],
    }
    dropped = checked[checked.reason == "duplicate_candidate"]
    assert dropped.detail.tolist() == ["kept the copy at retrieval_rank 2"]


def test_the_best_copy_of_a_candidate_is_kept_whatever_the_input_order(spark):
    """The copy kept has the best retrieval_rank, then the higher score; the same item in another
    request is not a copy."""
    rows = pd.DataFrame(
        {
            "request_type": "user",
            "request_id": ["u1", "u1", "u1", "u1", "u2"],
            "item_id": ["a", "a", "a", "b", "a"],
            "retrieval_rank": [5, 2, 2, 1, 9],
            "retrieval_score": [0.9, 0.5, 0.7, 1.0, 0.1],
            "sources": [["als"], ["covisit"], ["popularity"], ["als"], ["als"]],
        }
    )
    outputs = []
    for seed in range(3):
        shuffled = spark.createDataFrame(rows.sample(frac=1, random_state=seed)).repartition(2 + seed)
        marked = mark_copies(shuffled).toPandas()
        outputs.append(marked.sort_values(["request_id", "item_id", "retrieval_rank", "retrieval_score"]))
    for output in outputs:
        pd.testing.assert_frame_equal(output.reset_index(drop=True), outputs[0].reset_index(drop=True))
    kept = outputs[0][outputs[0][COPY_OF].isna()]
    assert sorted(zip(kept.request_id, kept.item_id, kept.retrieval_score, strict=True)) == [
        ("u1", "a", 0.7),
        ("u1", "b", 1.0),
        ("u2", "a", 0.1),
    ]
    assert outputs[0][COPY_OF].dropna().tolist() == ["2", "2"]


def test_query_requests_need_a_row_and_a_text_and_users_without_history_get_the_fallback():
    unknown = check_pairs(
        pairs([{"item_id": "a", "retrieval_rank": 1, "request_type": "query", "context_found": None}])
    )
    assert unknown.reason.tolist() == ["query_not_found"]
    blank = check_pairs(
        pairs([{"item_id": "a", "retrieval_rank": 1, "request_type": "query", "context_text": " \x07\t "}])
    )
    assert blank.reason.tolist() == ["empty_query_text"]
    other = check_pairs(pairs([{"item_id": "a", "retrieval_rank": 1, "request_type": "session"}]))
    assert other.reason.tolist() == ["unknown_request_type"]
    cold = check_pairs(
        pairs([{"item_id": "a", "retrieval_rank": 1, "context_found": None, "context_text": None}])
    )
    assert cold.reason.tolist() == [None] and cold.context_text.tolist() == [NEW_SHOPPER_CONTEXT]


def test_control_characters_are_replaced_and_whitespace_collapsed():
    assert clean_text("Lamp\x00 with\x1b[31m red\r\nshade\x7f\x85") == "Lamp with [31m red shade"
    assert clean_text("  \x07\t ") == "" and clean_text(None) == "" and clean_text(float("nan")) == ""
    assert clean_text("caf\ufffd ok") == "caf\ufffd ok", "U+FFFD from repaired UTF-8 is kept as a marker"


def test_items_without_a_title_have_no_text_and_control_characters_never_reach_the_text():
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "title": ["Desk\x00Lamp", None, "\x1b\x07"],
            "category": ["Home\n", "Home", "Home"],
            "brand": ["Lumo", "Lumo", "Lumo"],
            "attributes": [{"colour\t": "red\x00"}, None, None],
        }
    )
    texts = dict(item_text_frame(items, RerankConfig()).itertuples(index=False))
    assert texts == {"a": "Desk Lamp. Brand: Lumo. Category: Home. colour: red", "b": None, "c": None}


def test_every_reason_is_documented():
    doc = RELIABILITY_DOC.read_text()
    assert [reason for reason in REASONS if f"`{reason}`" not in doc] == []
