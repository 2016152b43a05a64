import itertools

import pandas as pd
import pytest

from llmrank_spark.config import SampleConfig
from llmrank_spark.data import CATEGORIES, END_OF_LOG, PRICE_BANDS, SEGMENTS, generate_sample, simulate
from llmrank_spark.data.sample_lakehouse import SHOPPER_PHRASES
from llmrank_spark.lakehouse import contract, frame_from_pandas, read_table, write_table

FUNNEL_ORDER = ["view", "click", "add_to_cart", "purchase"]


@pytest.fixture(scope="module")
def world():
    return simulate(SampleConfig())


@pytest.fixture(scope="module")
def tables(world):
    return world.tables


def _item_values(items: pd.DataFrame) -> pd.DataFrame:
    """One row per (item, attribute) with the item's value, brand included."""
    rows = [
        (i, a, v)
        for i, attrs in zip(items["item_id"], items["attributes"], strict=True)
        for a, v in attrs.items()
    ]
    values = pd.DataFrame(rows, columns=["item_id", "attribute", "item_value"])
    brands = items[["item_id", "brand"]].rename(columns={"brand": "item_value"}).assign(attribute="brand")
    return pd.concat([values, brands], ignore_index=True).merge(items[["item_id", "category"]], on="item_id")


def test_same_seed_gives_identical_tables_and_another_seed_differs(tables):
    again = generate_sample(SampleConfig())
    assert list(again) == list(tables)
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(again[name], frame, obj=name)
    other = generate_sample(SampleConfig(seed=8))
    assert not other["items"]["title"].equals(tables["items"]["title"])
    assert not other["interactions"]["item_id"].equals(tables["interactions"]["item_id"])


def test_default_sizes_meet_the_minimums(tables):
    items = tables["items"]
    assert len(items) >= 2000 and items["category"].nunique() >= 8
    assert len(tables["users"]) >= 1000
    assert len(tables["interactions"]) >= 50_000
    assert 200 <= len(tables["queries"]) <= 500


def test_frames_follow_the_contract_column_names(tables):
    for name, frame in tables.items():
        assert list(frame.columns) == [c.name for c in contract(name).columns], name
        keys = contract(name).keys
        assert not frame[keys].isna().any().any(), name
        assert not frame.duplicated(keys).any(), name


def test_items_text_carries_brand_and_attributes_and_price_fits_its_band(tables):
    items = tables["items"]
    assert items["item_id"].str.fullmatch(r"I\d{5}").all()
    for item in items.itertuples():
        spec = CATEGORIES[item.category]
        assert set(item.attributes) == {*spec.attributes, "price_band"}
        assert item.title.startswith(item.brand) and spec.title_noun in item.title
        assert all(value in item.description for value in item.attributes.values())
        low, high = spec.price_ranges[PRICE_BANDS.index(item.attributes["price_band"])]
        assert low <= item.price < high + 1


def test_brands_are_long_tailed_within_each_category(tables):
    shares = tables["items"].groupby("category")["brand"].value_counts(normalize=True)
    for category, share in shares.groupby(level="category"):
        assert share.max() >= 5 * share.median(), category


def test_events_form_a_funnel_inside_the_window(tables):
    events = tables["interactions"]
    counts = events["event_type"].value_counts()
    assert counts["view"] > counts["click"] > counts["add_to_cart"] > counts["purchase"] > 0
    # A step never happens more often for a user and item than the step before it.
    per_pair = events.pivot_table(
        index=["user_id", "item_id"], columns="event_type", values="event_ts", aggfunc="size", fill_value=0
    )
    for before, after in itertools.pairwise(FUNNEL_ORDER):
        assert (per_pair[after] <= per_pair[before]).all(), after
    assert events["event_ts"].min() >= END_OF_LOG - pd.Timedelta(days=SampleConfig().days)
    assert events["event_ts"].max() < END_OF_LOG
    purchases = events["event_type"] == "purchase"
    assert (events.loc[purchases, "value"] >= 1).all() and events.loc[~purchases, "value"].isna().all()
    assert events["query_id"].dropna().isin(tables["queries"]["query_id"]).all()


def test_a_few_items_draw_many_events(tables):
    per_item = tables["interactions"]["item_id"].value_counts()
    top_one_percent = per_item.iloc[: len(tables["items"]) // 100].sum()
    assert top_one_percent >= 0.1 * per_item.sum()


def test_users_have_segments_and_plausible_demographics(tables):
    users = tables["users"]
    assert set(users["segment"]) == set(SEGMENTS)
    assert users["age"].between(18, 85).all()
    assert users["gender"].dropna().isin(["F", "M"]).all()
    assert users["occupation"].notna().mean() > 0.9


def test_truth_ranks_every_segments_drivers_by_weight(tables):
    truth = tables["sample_truth"]
    assert set(truth["segment"]) == set(SEGMENTS)
    attribute_names = {a for attrs in tables["items"]["attributes"] for a in attrs} | {"brand"}
    assert set(truth["attribute"]) <= attribute_names
    for segment, rows in truth.groupby("segment"):
        ordered = rows.sort_values("rank")
        assert ordered["rank"].tolist() == list(range(1, len(rows) + 1)), segment
        assert ordered["weight"].is_monotonic_decreasing, segment


def test_driving_attributes_measurably_drive_choices(world, tables):
    """Users pick items with their preferred values far more often than a random item of the category has."""
    items = tables["items"]
    values = _item_values(items)
    share = values.groupby(["category", "attribute"])["item_value"].value_counts(normalize=True)
    preferences = world.preferences.rename(columns={"value": "preferred"})
    events = tables["interactions"].merge(items[["item_id", "category"]], on="item_id")
    engaged = events.merge(preferences, on=["user_id", "category"]).merge(
        values, on=["item_id", "category", "attribute"]
    )
    engaged["match"] = engaged["preferred"] == engaged["item_value"]
    engaged["chance"] = share.reindex(
        pd.MultiIndex.from_frame(engaged[["category", "attribute", "preferred"]])
    ).to_numpy()
    top = tables["sample_truth"].query("rank == 1")
    purchases = engaged[engaged["event_type"] == "purchase"]
    for segment, attribute in zip(top["segment"], top["attribute"], strict=True):
        rows = purchases[(purchases["segment"] == segment) & (purchases["attribute"] == attribute)]
        assert len(rows) > 100, segment
        assert rows["match"].mean() >= rows["chance"].mean() + 0.3, (segment, attribute)
    rates = engaged.groupby(["segment", "attribute"])[["match", "chance"]].mean()
    assert (rates["match"] > rates["chance"]).all(), rates


def test_query_labels_grade_by_category_and_query_values():
    """In the catalogue's words (no shopper phrasing), a query names its category and the values of
    its grade-3 items."""
    tables = simulate(SampleConfig(shopper_phrasing=0.0)).tables
    queries = tables["queries"]
    assert queries["query_id"].str.fullmatch(r"Q\d{4}").all()
    assert queries["query_class"].isin(list(CATEGORIES)).all()
    assert all(
        t.endswith(" " + c) for t, c in zip(queries["query_text"], queries["query_class"], strict=True)
    )
    labels = tables["query_labels"].merge(queries, on="query_id").merge(tables["items"], on="item_id")
    assert labels["relevance"].between(0, 3).all()
    assert ((labels["relevance"] > 0) == (labels["category"] == labels["query_class"])).all()
    exact = labels[labels["relevance"] == 3]
    for row in exact.itertuples():
        words = row.query_text.removesuffix(" " + row.query_class)
        item_words = " ".join(row.attributes.values()).lower()
        assert all(word in item_words for word in words.split()), (row.query_text, row.attributes)
    assert exact["query_id"].nunique() >= 0.8 * len(queries)
    assert set(labels["relevance"]) == {0, 1, 2, 3}


def test_shoppers_phrase_queries_in_their_own_words_and_nothing_else_changes(tables):
    plain = simulate(SampleConfig(shopper_phrasing=0.0)).tables
    phrased, catalogue = tables["queries"]["query_text"], plain["queries"]["query_text"]
    # About half the terms are typed in shoppers' words, each a listed phrase of the catalogue's term.
    assert 0.3 < (phrased != catalogue).mean() < 0.95
    shopper_words = {phrase for phrases in SHOPPER_PHRASES.values() for phrase in phrases}
    for typed, written in zip(phrased[phrased != catalogue], catalogue[phrased != catalogue], strict=True):
        assert any(phrase in typed for phrase in shopper_words), (typed, written)
    # Phrasing draws from its own generator: every other table is the same.
    for name in ("items", "interactions", "users", "query_labels"):
        pd.testing.assert_frame_equal(tables[name], plain[name])
    pd.testing.assert_frame_equal(
        tables["queries"].drop(columns="query_text"), plain["queries"].drop(columns="query_text")
    )


def test_a_small_config_still_reaches_n_events():
    small = generate_sample(SampleConfig(n_items=100, n_users=50, n_events=1000, n_queries=10, days=7))
    assert len(small["items"]) == 100 and small["items"]["category"].nunique() == len(CATEGORIES)
    assert len(small["interactions"]) >= 1000


def test_more_queries_than_the_schema_can_form_names_the_setting():
    with pytest.raises(ValueError, match=r"sample\.n_queries"):
        generate_sample(SampleConfig(n_queries=100_000))


def test_every_frame_converts_to_its_contract_and_items_round_trip(spark, config, tables):
    for name, frame in tables.items():
        df = frame_from_pandas(spark, frame, name)
        assert [(f.name, f.dataType.simpleString()) for f in df.schema] == [
            (c.name, c.type) for c in contract(name).columns
        ], name
    write_table(frame_from_pandas(spark, tables["items"], "items"), config, "items")
    back = read_table(spark, config, "items").toPandas().set_index("item_id")
    assert len(back) == len(tables["items"])
    first = tables["items"].iloc[0]
    assert back.loc[first["item_id"], "title"] == first["title"]
    assert dict(back.loc[first["item_id"], "attributes"]) == first["attributes"]
