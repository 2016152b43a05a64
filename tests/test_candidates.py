"""Candidate generation: the numpy top-k core, the blender's rules, and the contract of the built lists."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from llmrank_spark.config import CandidatesConfig, ConfigError, load_config
from llmrank_spark.lakehouse import check_schema, contract, frame_from_pandas
from llmrank_spark.retrieval import (
    blend,
    build_candidates,
    item_popularity,
    popularity_candidates,
    positions,
    prepare_inputs,
    rank_against,
    recency_profiles,
    semantic_candidates,
    top_k,
)

N = 10
RUN_DATE = dt.date(2026, 11, 20)
# Each category's titles share a phrase, so text similarity follows the category.
PHRASES = {
    "shoes": "trail running shoe",
    "books": "paperback mystery novel",
    "music": "vinyl jazz record",
    "garden": "ceramic flower pot",
}
CATEGORIES = list(PHRASES)
FUNNEL = ["view", "click", "view", "purchase"]
CFG = CandidatesConfig(
    n_per_request=N,
    quotas={"covisit": 3, "als": 3, "semantic": 2, "popularity": 1},
    als_rank=4,
    als_max_iter=3,
)


def _item(number: int) -> str:
    return f"i{number:02d}"


def _items() -> pd.DataFrame:
    categories = [CATEGORIES[i % 4] for i in range(40)]
    return pd.DataFrame(
        {
            "item_id": [_item(i) for i in range(40)],
            "title": [f"{PHRASES[c]} {i}" for i, c in enumerate(categories)],
            "category": categories,
        }
    )


def _interactions() -> pd.DataFrame:
    """Users u0..u5, eight events each on items of their favourite category, an hour apart."""
    base = dt.datetime(2026, 11, 1)
    rows = []
    for user in range(6):
        favourite = user % 4
        for step in range(8):
            rows.append(
                {
                    "user_id": f"u{user}",
                    "item_id": _item(favourite + 4 * ((user + step) % 10)),
                    "event_type": FUNNEL[step % 4],
                    "event_ts": base + dt.timedelta(days=user, hours=step),
                }
            )
    # After run_date: must not count, so "later" is no active user of this date.
    rows.append(
        {"user_id": "later", "item_id": _item(0), "event_type": "view", "event_ts": dt.datetime(2026, 12, 1)}
    )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tables(spark):
    users = pd.DataFrame({"user_id": ["u0", "newcomer"]})
    return (
        frame_from_pandas(spark, _items(), "items"),
        frame_from_pandas(spark, _interactions(), "interactions"),
        frame_from_pandas(spark, users, "users"),
    )


@pytest.fixture(scope="module")
def built(spark, tables):
    frame = build_candidates(spark, *tables, CFG, RUN_DATE).candidates
    return frame, _sorted(frame.toPandas())


def _sorted(lists: pd.DataFrame) -> pd.DataFrame:
    lists = lists.sort_values(["request_id", "retrieval_rank"]).reset_index(drop=True)
    for column in ("source_ranks", "source_scores"):
        lists[column] = lists[column].map(lambda pairs: sorted(dict(pairs).items()))
    lists["sources"] = lists["sources"].map(list)
    return lists


# ---- pure core ---------------------------------------------------------------------------------------


def test_top_k_orders_best_first_with_ties_to_the_lower_index_and_skips_masked_columns():
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.5], [-np.inf, 0.2, -np.inf, -np.inf, -np.inf]])
    best = top_k(scores, 3)
    assert best[0].tolist() == [1, 0, 2]
    assert best[1].tolist() == [1]  # only one column is not masked


def test_positions_finds_rows_of_a_sorted_id_array():
    ids = np.array(["a", "c", "e"], dtype=object)
    assert positions(ids, ["e", "b", "a"]).tolist() == [2, -1, 0]


def test_rank_against_masks_excluded_items():
    item_ids = np.array(["a", "b", "c"], dtype=object)
    matrix = np.eye(3, dtype=np.float32)
    queries = np.array([[0.1, 0.9, 0.5], [0.1, 0.9, 0.5]], dtype=np.float32)
    ranked = rank_against(["r1", "r2"], queries, [None, ["b", "unknown"]], item_ids, matrix, k=2)
    assert ranked[ranked.request_id == "r1"].item_id.tolist() == ["b", "c"]
    assert ranked[ranked.request_id == "r2"].item_id.tolist() == ["c", "a"]
    assert ranked.source_rank.tolist() == [1, 2, 1, 2]


def test_recency_profiles_lean_towards_heavier_history():
    item_ids = np.array(["a", "b"], dtype=object)
    matrix = np.eye(2, dtype=np.float32)
    history = [[{"item_id": "a", "weight": 3.0}, {"item_id": "b", "weight": 1.0}]]
    profile = recency_profiles(history, item_ids, matrix)[0]
    assert profile[0] > profile[1] > 0
    assert np.linalg.norm(profile) == pytest.approx(1.0)


# ---- blender -----------------------------------------------------------------------------------------


def test_blend_keeps_every_source_of_an_item_and_honours_quotas(spark):
    schema = "request_id string, item_id string, source string, source_score double, source_rank int"
    covisit = [("r", f"c{i}", "covisit", 10.0 - i, i) for i in range(1, 5)]
    semantic = [("r", "c1", "semantic", 0.9, 1), ("r", "s2", "semantic", 0.8, 2)]
    retrieved = [spark.createDataFrame(covisit, schema), spark.createDataFrame(semantic, schema)]
    exclusions = spark.createDataFrame([("r", "c2")], "request_id string, item_id string")
    cfg = CandidatesConfig(n_per_request=3, quotas={"semantic": 2}, source_weights={"semantic": 0.1})
    lists = blend(retrieved, exclusions, cfg, RUN_DATE).toPandas().sort_values("retrieval_rank")
    # c2 is excluded; s2 has the lowest fused score but is within semantic's quota, so it displaces c4.
    assert lists.item_id.tolist() == ["c1", "c3", "s2"]
    first = lists.iloc[0]
    assert list(first.sources) == ["covisit", "semantic"]
    assert dict(first.source_ranks) == {"covisit": 1, "semantic": 1}
    assert lists.retrieval_score.is_monotonic_decreasing
    without_quotas = blend(retrieved, exclusions, cfg.model_copy(update={"quotas": {}}), RUN_DATE)
    assert [r.item_id for r in without_quotas.orderBy("retrieval_rank").collect()] == ["c1", "c3", "c4"]


# ---- built lists ---------------------------------------------------------------------------------------


def test_lists_match_the_candidates_contract(built):
    frame, lists = built
    check_schema(frame, "candidates", "build_candidates")
    assert frame.columns == [c.name for c in contract("candidates").columns]
    assert set(lists.request_type) == {"user"} and set(lists.run_date) == {RUN_DATE}


def test_every_active_user_gets_exactly_n_distinct_items(built):
    _, lists = built
    assert set(lists.request_id) == {f"u{u}" for u in range(6)} | {"newcomer"}
    assert not lists.duplicated(["request_id", "item_id"]).any()
    for _, items in lists.groupby("request_id"):
        assert items.retrieval_rank.tolist() == list(range(1, N + 1))
    for row in lists.itertuples():
        assert (
            sorted(row.sources)
            == [source for source, _ in row.source_ranks]
            == [source for source, _ in row.source_scores]
        )


def test_cold_start_user_gets_the_popularity_list(built):
    _, lists = built
    newcomer = lists[lists.request_id == "newcomer"]
    assert all(sources == ["popularity"] for sources in newcomer.sources)
    assert [dict(ranks)["popularity"] for ranks in newcomer.source_ranks] == list(range(1, N + 1))


def test_purchased_items_are_never_proposed(built):
    _, lists = built
    events = _interactions()
    purchased = events[events.event_type == "purchase"]
    proposed = lists.merge(purchased, left_on=["request_id", "item_id"], right_on=["user_id", "item_id"])
    assert proposed.empty
    # A viewed item may come back: viewing is no reason to hide it.
    viewed_only = set(events[events.user_id == "u0"].item_id) - set(
        purchased[purchased.user_id == "u0"].item_id
    )
    assert viewed_only & set(lists[lists.request_id == "u0"].item_id)


def test_exclusion_rule_is_configurable_and_covers_ratings(spark, tables):
    items, interactions, users = tables
    ratings = frame_from_pandas(
        spark,
        pd.DataFrame(
            {
                "user_id": ["fan"],
                "item_id": [_item(1)],
                "event_type": ["rating"],
                "event_ts": [dt.datetime(2026, 11, 2)],
            }
        ),
        "interactions",
    )
    inputs = prepare_inputs(spark, items, interactions.unionByName(ratings), users, CFG, RUN_DATE)
    excluded = {tuple(r) for r in inputs.exclusions.collect()}
    expected = {(r.user_id, r.item_id) for r in _interactions().itertuples() if r.event_type == "purchase"}
    assert excluded == expected | {("fan", _item(1))}

    keep_all = CFG.model_copy(update={"exclude_purchased": False})
    inputs = prepare_inputs(spark, items, interactions, users, keep_all, RUN_DATE)
    assert inputs.exclusions.count() == 0
    whole_catalogue = popularity_candidates(inputs, 40).toPandas()
    proposed = set(zip(whole_catalogue.request_id, whole_catalogue.item_id, strict=True))
    assert expected <= proposed


def test_semantic_neighbours_share_the_users_category(spark, tables):
    inputs = prepare_inputs(spark, *tables, CFG, RUN_DATE)
    lists = semantic_candidates(inputs, 5).toPandas()
    category = dict(zip(_items().item_id, _items().category, strict=True))
    for user in range(6):
        proposed = lists[lists.request_id == f"u{user}"].sort_values("source_rank").item_id
        assert {category[item] for item in proposed} == {CATEGORIES[user % 4]}


def test_same_inputs_and_seed_give_identical_lists(spark, tables, built):
    _, first = built
    again = _sorted(build_candidates(spark, *tables, CFG, RUN_DATE).candidates.toPandas())
    pd.testing.assert_frame_equal(first, again)


def test_unknown_event_type_is_left_out_and_rejected_naming_the_config_key(spark, tables):
    items, interactions, users = tables
    odd = frame_from_pandas(
        spark,
        pd.DataFrame(
            {
                "user_id": ["u0"],
                "item_id": [_item(0)],
                "event_type": ["wishlist"],
                "event_ts": [dt.datetime(2026, 11, 2)],
            }
        ),
        "interactions",
    )
    inputs = prepare_inputs(spark, items, interactions.unionByName(odd), users, CFG, RUN_DATE)
    assert inputs.events.where("event_type = 'wishlist'").count() == 0
    [rejected] = inputs.rejected.collect()
    assert (rejected.request_id, rejected.item_id, rejected.reason) == ("u0", _item(0), "unknown_event_type")
    assert "'wishlist' not in candidates.event_weights; 1 events ignored" in rejected.detail


def test_quotas_and_weights_name_only_known_retrievers():
    with pytest.raises(ConfigError, match="unknown retriever"):
        load_config(overrides=["candidates.quotas={covisits: 5}"])
    with pytest.raises(ConfigError, match="negative"):
        load_config(overrides=["candidates.source_weights={als: -1}"])


def test_global_popularity_is_the_catalogue_order_less_each_users_exclusions(spark, tables):
    """Ranked from the catalogue's head (no global window), deep enough for the user who excludes most."""
    inputs = prepare_inputs(spark, *tables, CFG, RUN_DATE)
    depth = 5
    lists = popularity_candidates(inputs, depth).toPandas()
    order = (
        item_popularity(inputs)
        .toPandas()
        .sort_values(["popularity", "item_id"], ascending=[False, True])["item_id"]
        .tolist()
    )
    excluded = inputs.exclusions.toPandas().groupby("request_id")["item_id"].agg(set)
    assert excluded.map(len).max() >= 1  # some user's list has to reach past the head
    for user, proposed in lists.sort_values("source_rank").groupby("request_id")["item_id"]:
        expected = [item for item in order if item not in excluded.get(user, set())][:depth]
        assert proposed.tolist() == expected, user
