"""Attribute importance from behaviour: the estimator's counts, a planted driver, fallbacks, edge items."""

import itertools

import numpy as np
import pandas as pd
import pytest
from test_attributes import RUN_DATE, ranked_frame

from llmrank_spark.config import AttributesConfig
from llmrank_spark.explain import behaviour_by_segment, behaviour_importance, behaviour_orders
from llmrank_spark.explain.behaviour import CONTEXT_KEYS, preference_statistics
from llmrank_spark.lakehouse import check_schema, frame_from_pandas

COLOURS = ["red", "blue", "green", "black"]
BRANDS = ["Acme", "Bolt", "Cirra"]
FITS = ["slim", "regular"]


def offered(shares: dict[str, float]) -> pd.DataFrame:
    """The colour values offered to context u1 in category shoes, with no segment behaviour."""
    return pd.DataFrame(
        {
            "request_type": "user",
            "request_id": "u1",
            "category": "shoes",
            "attribute": "colour",
            "value": list(shares),
            "market_share": list(shares.values()),
            "segment_weight": 0.0,
            "segment_total": 0.0,
        }
    )


def chose(values: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_type": "user",
            "request_id": "u1",
            "category": "shoes",
            "attribute": "colour",
            "item_id": [f"i{n}" for n in range(len(values))],
            "value": values,
            "weight": 1.0,
        }
    )


EVEN = dict.fromkeys(COLOURS, 0.25)


def test_each_choice_is_held_out_against_the_preferred_value_of_the_others():
    # Held out, each red is predicted by the other choices' red (hit; chance 0.25); the blue is predicted
    # red too (miss; chance 0.25).
    stats = preference_statistics(chose(["red", "red", "red", "blue"]), offered(EVEN), prior_events=0.0)
    row = stats.iloc[0]
    assert len(stats) == 1 and row["preferred_value"] == "red"
    assert (row["matched"], row["expected"], row["choices"]) == pytest.approx((3.0, 1.0, 4.0))


def test_a_value_chosen_by_chance_does_not_predict_itself():
    # Two different values: each held-out choice is predicted by the other value, never by itself.
    stats = preference_statistics(chose(["red", "blue"]), offered(EVEN), prior_events=0.0).iloc[0]
    assert (stats["matched"], stats["expected"], stats["choices"]) == pytest.approx((0.0, 0.5, 2.0))


def test_ties_share_the_prediction_and_the_excess_over_market_share_breaks_them():
    # red and blue tie after holding out the green: each is predicted with probability 1/2.
    stats = preference_statistics(chose(["red", "blue", "green"]), offered(EVEN), prior_events=0.0).iloc[0]
    assert (stats["matched"], stats["expected"], stats["choices"]) == pytest.approx((0.0, 0.75, 3.0))
    # A rare value chosen as often as a common one is the preferred one: it exceeds its share more.
    skewed = {"red": 0.7, "blue": 0.1, "green": 0.1, "black": 0.1}
    assert preference_statistics(chose(["red", "blue"]), offered(skewed), 0.0).iloc[0]["preferred_value"] == (
        "blue"
    )


def test_a_lone_choice_predicts_only_through_its_segment_prior():
    alone = chose(["red"])
    assert preference_statistics(alone, offered(EVEN), prior_events=0.0).iloc[0]["choices"] == 0.0
    segment = offered(EVEN).assign(segment_weight=[5.0, 0.0, 0.0, 0.0], segment_total=5.0 + 1.0)
    segment.loc[0, "segment_weight"] += 1.0  # the segment's counts include this context's own red
    stats = preference_statistics(alone, segment, prior_events=1.0).iloc[0]
    assert (stats["matched"], stats["expected"], stats["choices"]) == pytest.approx((1.0, 0.25, 1.0))
    assert list(stats.index) == [*CONTEXT_KEYS, "matched", "expected", "choices", "preferred_value"]


# A catalogue where every colour x brand x fit exists in each of two categories (shoes, bags), and a log
# where the shoppers of segment "colourful" choose only their own colour, every brand and fit equally:
# colour is the planted driver, the other attributes are chosen exactly as the catalogue offers them.
CATALOGUE = pd.DataFrame(
    [
        {
            "item_id": f"{category[0]}-{colour}-{brand}-{fit}",
            "title": f"{brand} {colour} {fit}",
            "category": category,
            "brand": brand,
            "attributes": {"colour": colour, "fit": fit},
        }
        for category in ("shoes", "bags")
        for colour, brand, fit in itertools.product(COLOURS, BRANDS, FITS)
    ]
    + [
        {"item_id": "bare", "title": "Plain", "category": "shoes", "brand": None, "attributes": None},
        {
            "item_id": "single",
            "title": "Single",
            "category": "shoes",
            "brand": None,
            "attributes": {"fit": "slim"},
        },
        {
            "item_id": "cup",
            "title": "Cup",
            "category": "cups",
            "brand": "Acme",
            "attributes": {"colour": "red"},
        },
    ]
)
SHOPPERS = {f"u{n}": COLOURS[n % len(COLOURS)] for n in range(8)}


def planted_log() -> pd.DataFrame:
    rows = [
        {"user_id": user, "item_id": f"s-{colour}-{brand}-{fit}", "event_type": "view"}
        for user, colour in SHOPPERS.items()
        for brand, fit in itertools.product(BRANDS, FITS)
    ]
    # A search session: its events belong to the query, not to the shopper's own choices.
    rows.append({"user_id": "u0", "item_id": "s-green-Acme-slim", "event_type": "view", "query_id": "q1"})
    log = pd.DataFrame(rows)
    return log.assign(event_ts=pd.Timestamp("2026-11-01") + pd.to_timedelta(np.arange(len(log)), unit="s"))


USERS = pd.DataFrame(
    {"user_id": [*SHOPPERS, "cold", "stranger"], "segment": ["colourful"] * 9 + [None]}
).dropna()
QUERIES = pd.DataFrame({"query_id": ["q1"], "query_text": ["black bag"], "query_class": ["bags"]})
# The query's relevant items are the black bags, of every brand and fit.
LABELS = pd.DataFrame(
    [
        {"query_id": "q1", "item_id": f"b-{colour}-{brand}-{fit}", "relevance": 3 if colour == "black" else 0}
        for colour, brand, fit in itertools.product(COLOURS, BRANDS, FITS)
    ]
)
CFG = AttributesConfig(top_k_items=3)


@pytest.fixture(scope="module")
def planted(spark):
    tables = {
        "items": CATALOGUE,
        "interactions": planted_log(),
        "users": USERS,
        "queries": QUERIES,
        "query_labels": LABELS,
    }
    frames = {name: frame_from_pandas(spark, frame, name) for name, frame in tables.items()}
    importance = behaviour_importance(
        frames["items"],
        frames["interactions"],
        CFG,
        RUN_DATE,
        users=frames["users"],
        queries=frames["queries"],
        query_labels=frames["query_labels"],
    )
    importance.statistics.persist()  # every level and table below derives from it
    yield frames, importance
    importance.statistics.unpersist()


def test_the_planted_driver_ranks_first_with_each_shoppers_own_value(planted):
    _, importance = planted
    contexts = importance.contexts.toPandas()
    users = contexts[(contexts["request_type"] == "user") & (contexts["category"] == "shoes")]
    top = (
        users.sort_values("importance", ascending=False).drop_duplicates("request_id").set_index("request_id")
    )
    assert set(top.index) == set(SHOPPERS) and (top["attribute"] == "colour").all()
    colours = users[users["attribute"] == "colour"].set_index("request_id")["preferred_value"]
    assert colours.to_dict() == SHOPPERS
    # Brand and fit were chosen exactly as offered: no evidence that they matter.
    others = users[users["attribute"] != "colour"]
    assert (others["importance"] < 0.5).all() and (
        users.loc[users["attribute"] == "colour", "importance"] > 1
    ).all()

    segments = importance.segments.toPandas().set_index(["segment", "category", "attribute"]).sort_index()
    assert segments.loc[("colourful", "shoes")]["importance"].idxmax() == "colour"
    assert segments.loc[("colourful", "shoes", "colour"), "contexts"] == len(SHOPPERS)

    query = contexts[(contexts["request_id"] == "q1") & (contexts["category"] == "bags")].set_index(
        "attribute"
    )
    assert query["importance"].idxmax() == "colour" and query.loc["colour", "preferred_value"] == "black"


def test_orders_fall_back_to_the_segment_then_the_category_and_say_so(spark, planted):
    frames, importance = planted
    lists = ranked_frame(
        requests={
            ("u1", "user"): ["s-blue-Acme-slim", "s-red-Bolt-regular", "bare"],
            ("cold", "user"): ["s-red-Acme-slim", "single"],  # in the segment, no events
            ("stranger", "user"): ["s-red-Acme-slim"],  # no segment, no events
            ("u2", "user"): ["cup"],  # nobody chose in the category
            ("q1", "query"): ["b-black-Acme-slim"],
        }
    )
    orders = behaviour_orders(
        frame_from_pandas(spark, lists, "ranked"),
        frames["items"],
        importance,
        CFG,
        RUN_DATE,
        frames["users"],
        frames["queries"],
    )
    check_schema(orders, "attribute_order", "behaviour_orders output")
    table = orders.toPandas().set_index(["request_id", "item_id", "attribute"]).sort_index()

    own = table.loc[("u1", "s-blue-Acme-slim")]
    assert own["rank"].to_dict() == {"colour": 1, "brand": own["rank"]["brand"], "fit": own["rank"]["fit"]}
    assert (own["source"] == "behaviour").all()
    assert own.loc["colour", "preferred_value"] == "blue" and bool(own.loc["colour", "matches_preference"])
    assert not table.loc[("u1", "s-red-Bolt-regular", "colour"), "matches_preference"]

    segments = importance.segments.toPandas().set_index(["segment", "category", "attribute"]).sort_index()
    segment = segments["importance"]
    cold = table.loc[("cold", "s-red-Acme-slim")]
    assert (cold["source"] == "segment").all() and cold.loc["colour", "rank"] == 1
    assert cold["importance"].to_dict() == pytest.approx(segment.loc[("colourful", "shoes")].to_dict())

    stranger = table.loc[("stranger", "s-red-Acme-slim")]
    assert (stranger["source"] == "category").all() and stranger.loc["colour", "rank"] == 1
    assert stranger["preferred_value"].isna().all() and stranger["matches_preference"].isna().all()

    cup = table.loc[("u2", "cup")]
    assert (cup["source"] == "none").all() and (cup["importance"] == 0.0).all()

    # No attributes: no rows, no error; one attribute: one row, ranked first.
    assert "bare" not in table.index.get_level_values("item_id")
    assert table.loc[("cold", "single")]["rank"].to_dict() == {"fit": 1}
    assert table.loc[("q1", "b-black-Acme-slim")]["importance"].idxmax() == "colour"
    assert table["model_version"].isna().all() and (table["run_date"] == RUN_DATE).all()


def test_the_segment_table_holds_every_group_and_category_with_behaviour(planted):
    _, importance = planted
    table = behaviour_by_segment(importance, RUN_DATE)
    check_schema(table, "attribute_order_by_segment", "behaviour_by_segment output")
    rows = table.toPandas()
    groups = set(rows[["segment_type", "segment", "category"]].itertuples(index=False, name=None))
    # The query's search session chose a shoe: its class has (one choice of) behaviour in shoes too.
    assert groups == {
        ("user_segment", "colourful", "shoes"),
        ("query_class", "bags", "bags"),
        ("query_class", "bags", "shoes"),
    }
    first = rows[rows["rank"] == 1].set_index(["segment", "category"])
    assert first.loc[("colourful", "shoes"), "attribute"] == "colour"
    assert first.loc[("bags", "bags"), "attribute"] == "colour"
    assert first.loc[("bags", "bags"), "preferred_value"] == "black" and (rows["source"] == "behaviour").all()
