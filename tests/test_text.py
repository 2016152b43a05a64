import datetime as dt

import pandas as pd
import pytest

from llmrank_spark.config import RerankConfig
from llmrank_spark.lakehouse import frame_from_pandas
from llmrank_spark.text import (
    HISTORY_PREFIX,
    NEW_SHOPPER_CONTEXT,
    PROFILE_PREFIX,
    budget_split,
    contexts_with_user_texts,
    format_attributes,
    history_context,
    item_text_frame,
    item_texts,
    user_context_frame,
    user_contexts,
    user_text_frame,
)

CFG = RerankConfig(context_items=2, item_attributes=2)
ITEMS = pd.DataFrame(
    {
        "item_id": ["a", "b", "c"],
        "title": ["Red Shoe", "Blue Hat", "Green Bag"],
        "category": ["Shoes", None, "Bags"],
        "brand": ["Acme", "Zed", ""],
        "attributes": [{"size": "42", "color": "red", "material": "leather"}, None, {}],
    }
)


def history(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "event_ts"])
    return events.assign(event_ts=pd.to_datetime(events["event_ts"])).merge(ITEMS, on="item_id")


def test_item_text_fills_template_with_first_attributes_by_name_and_marks_missing_fields():
    texts = dict(item_text_frame(ITEMS, CFG).itertuples(index=False))
    assert texts["a"] == "Red Shoe. Brand: Acme. Category: Shoes. color: red, material: leather"
    assert texts["b"] == "Blue Hat. Brand: Zed. Category: unknown."
    assert texts["c"] == "Green Bag. Brand: unknown. Category: Bags."


def test_attributes_arrive_as_dict_or_pairs_and_format_the_same():
    as_dict = {"b": "2", "a": "1", "c": None}
    assert format_attributes(as_dict, 5) == format_attributes(list(as_dict.items()), 5) == "a: 1, b: 2"


def test_user_context_is_newest_distinct_items_first_whatever_the_row_order():
    rows = [
        ("u1", "a", "2026-01-01"),
        ("u1", "b", "2026-01-02"),
        ("u1", "a", "2026-01-05"),
        ("u1", "c", "2026-01-03"),
        ("u2", "c", "2026-01-01"),
    ]
    expected = {
        "u1": HISTORY_PREFIX + "Red Shoe (Shoes, Acme); Green Bag (Bags, unknown)",
        "u2": HISTORY_PREFIX + "Green Bag (Bags, unknown)",
    }
    for seed in range(3):
        shuffled = history(rows).sample(frac=1, random_state=seed)
        assert dict(user_context_frame(shuffled, CFG).itertuples(index=False)) == expected


def test_user_without_history_gets_the_documented_fallback():
    assert history_context([]) == NEW_SHOPPER_CONTEXT


def test_equal_event_times_are_ordered_by_item_id():
    rows = [("u1", "b", "2026-01-01"), ("u1", "a", "2026-01-01")]
    contexts = user_context_frame(history(rows), CFG)
    assert (
        contexts["context_text"].iloc[0] == HISTORY_PREFIX + "Red Shoe (Shoes, Acme); Blue Hat (unknown, Zed)"
    )


def test_profile_states_each_top_category_values_chosen_on_two_items_or_more_before_the_history():
    items = pd.DataFrame(
        [
            ("s1", "Shoe 1", "shoes", "Acme", {"colour": "red", "fit": "wide"}),
            ("s2", "Shoe 2", "shoes", "Acme", {"colour": "red", "fit": "narrow"}),
            ("s3", "Shoe 3", "shoes", "Bolt", {"colour": "blue", "fit": "slim"}),
            ("h1", "Hat 1", "hats", "Zed", {"colour": "red"}),
            ("h2", "Hat 2", "hats", "Zed", {"colour": "blue"}),
            ("b1", "Bag 1", "bags", "Acme", {"colour": "red"}),
        ],
        columns=["item_id", "title", "category", "brand", "attributes"],
    )
    rows = [("u1", i, f"2026-01-0{day}") for day, i in enumerate(["s1", "s2", "s3", "h1", "h2", "b1"], 1)]
    rows += [("u1", "s1", "2026-01-08"), ("u2", "s1", "2026-01-01")]  # s1 counts once; u2: one item
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "event_ts"])
    events = events.assign(event_ts=pd.to_datetime(events["event_ts"])).merge(items, on="item_id")
    cfg = RerankConfig(context_items=1, context_template="{title}", profile_categories=2)

    contexts = dict(user_context_frame(events, cfg).itertuples(index=False))

    # Shoes (3 items) then hats (2); bags (1) is past the 2 categories. The fits and the hats' colours
    # were each chosen once: no preference to state.
    profile = PROFILE_PREFIX + "shoes: brand: Acme, colour: red; hats: brand: Zed"
    assert contexts == {"u1": profile + ". " + HISTORY_PREFIX + "Shoe 1", "u2": HISTORY_PREFIX + "Shoe 1"}
    no_profile = cfg.model_copy(update={"profile_categories": 0})
    assert (
        dict(user_context_frame(events, no_profile).itertuples(index=False))["u1"]
        == HISTORY_PREFIX + "Shoe 1"
    )


USERS = pd.DataFrame({"user_id": ["u1", "u3"], "segment": ["budget", None], "age": [31, 40]})


def test_user_text_states_users_fields_before_the_history_and_marks_missing_ones():
    texts = user_text_frame(USERS, "{segment} shopper, {age}")
    assert texts.to_dict("list") == {
        "request_id": ["u1", "u3"],
        "user_text": ["budget shopper, 31", "unknown shopper, 40"],
    }
    with pytest.raises(
        KeyError, match=r"names 'tier' which is not a field of the users table; use \{segment\}"
    ):
        user_text_frame(USERS, "{tier}")

    history_text = HISTORY_PREFIX + "Red Shoe (Shoes, Acme)"
    frame = pd.DataFrame(
        {
            "request_id": ["u1", "u2", "u3", "u4"],
            "user_text": ["budget shopper", None, "unknown shopper", ""],
            "context_text": [history_text, history_text, None, None],
        }
    )
    assert contexts_with_user_texts(frame)["context_text"].tolist() == [
        "budget shopper. " + history_text,
        history_text,  # no users row: the history alone, as without a user template
        "unknown shopper. " + NEW_SHOPPER_CONTEXT,
        NEW_SHOPPER_CONTEXT,
    ]


def test_budget_cuts_the_context_first():
    assert budget_split(context_tokens=100, item_tokens=30, budget=61) == (31, 30)
    assert budget_split(context_tokens=10, item_tokens=30, budget=61) == (10, 30)


def test_budget_caps_a_long_item_but_leaves_the_context_its_share():
    context, item = budget_split(context_tokens=100, item_tokens=500, budget=100)
    assert (context, item) == (25, 75)
    assert budget_split(context_tokens=5, item_tokens=500, budget=100) == (5, 95)


def test_spark_helpers_match_the_pure_functions(spark):
    items = frame_from_pandas(spark, ITEMS, "items")
    rendered = dict(item_texts(items, CFG).toPandas().itertuples(index=False))
    assert rendered == dict(item_text_frame(ITEMS, CFG).itertuples(index=False))

    events = pd.DataFrame(
        [("u1", "a", "2026-01-01"), ("u1", "b", "2026-01-03"), ("u2", "c", "2026-01-04")],
        columns=["user_id", "item_id", "event_ts"],
    ).assign(event_type="view", event_ts=lambda f: pd.to_datetime(f["event_ts"]))
    interactions = frame_from_pandas(spark, events, "interactions")
    contexts = dict(user_contexts(interactions, items, CFG, as_of=dt.date(2026, 1, 2)).collect())
    # Events after the run date are not history yet: u1 saw only "a" by then, u2 nothing.
    assert contexts == {"u1": HISTORY_PREFIX + "Red Shoe (Shoes, Acme)"}

    stated = CFG.model_copy(update={"user_template": "{segment} shopper"})
    users = frame_from_pandas(spark, USERS, "users")
    contexts = dict(
        user_contexts(interactions, items, stated, as_of=dt.date(2026, 1, 2), users=users).collect()
    )
    # u3 has a users row and no history yet; u2 has neither by the run date.
    assert contexts == {
        "u1": "budget shopper. " + HISTORY_PREFIX + "Red Shoe (Shoes, Acme)",
        "u3": "unknown shopper. " + NEW_SHOPPER_CONTEXT,
    }
