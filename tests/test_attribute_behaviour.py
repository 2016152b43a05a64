"""Attribute importance from behaviour: the estimator's counts, a planted driver, fallbacks, edge items."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import functions as F
from test_attributes import RUN_DATE, ranked_frame
from tiny_reranker import tiny_artifact

from llmrank_spark.config import AttributesConfig, RerankConfig
from llmrank_spark.explain import (
    AttributeModel,
    attribute_model_importance,
    attribute_texts,
    attribute_values,
    behaviour_by_segment,
    behaviour_importance,
    behaviour_orders,
    list_agreement,
    listnet_rows,
)
from llmrank_spark.explain.attribute_model import (
    AttributeModelVerdict,
    eligible_lists,
    model_importance,
    train_attribute_model,
)
from llmrank_spark.explain.behaviour import CONTEXT_KEYS, preference_statistics
from llmrank_spark.lakehouse import check_schema, frame_from_pandas
from llmrank_spark.rerank import PairScorer, ScoringSettings, cross_encoder_spec, read_manifest

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


def planted_orders(spark, planted, lists: pd.DataFrame, **model) -> pd.DataFrame:
    """`behaviour_orders` of the planted log for the `ranked` rows `lists`, checked against the contract;
    `model`: behaviour_orders' attribute-model arguments."""
    frames, importance = planted
    orders = behaviour_orders(
        frame_from_pandas(spark, lists, "ranked"),
        frames["items"],
        importance,
        CFG,
        RUN_DATE,
        frames["users"],
        frames["queries"],
        **model,
    )
    check_schema(orders, "attribute_order", "behaviour_orders output")
    return orders.toPandas()


def test_orders_fall_back_to_the_segment_then_the_category_and_say_so(spark, planted):
    _, importance = planted
    lists = ranked_frame(
        requests={
            ("u1", "user"): ["s-blue-Acme-slim", "s-red-Bolt-regular", "bare"],
            ("cold", "user"): ["s-red-Acme-slim", "single"],  # in the segment, no events
            ("stranger", "user"): ["s-red-Acme-slim"],  # no segment, no events
            ("u2", "user"): ["cup"],  # nobody chose in the category
            ("q1", "query"): ["b-black-Acme-slim"],
        }
    )
    table = (
        planted_orders(spark, planted, lists).set_index(["request_id", "item_id", "attribute"]).sort_index()
    )

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


# ---- the attribute model: contexts without behaviour, read from their text ---------------------------


def test_attribute_texts_name_the_categorys_most_common_values(spark, planted):
    frames, _ = planted
    values = attribute_values(frames["items"], CFG.item_fields)
    texts = attribute_texts(values).toPandas().set_index(["category", "attribute"])["attribute_text"]
    # Each colour has 6 shoes (3 brands x 2 fits), ties in name order; the extra items add one value each.
    assert texts[("shoes", "colour")] == "shoes colour: black, blue, green, red"
    assert texts[("shoes", "fit")] == "shoes fit: slim, regular"
    assert texts[("cups", "colour")] == "cups colour: red"
    many = pd.DataFrame(
        {"item_id": [f"i{n}" for n in range(10)], "category": "hats", "attribute": "price_band"}
    ).assign(value=[f"v{n // 2 if n < 4 else n}" for n in range(10)])
    shown = attribute_texts(spark.createDataFrame(many)).first()["attribute_text"]
    # v0 and v1 have two items each; then the single-item values by name, VALUES_SHOWN in all.
    assert shown == "hats price band: v0, v1, v4, v5, v6, v7"


def test_list_rows_and_agreement_are_per_context_and_category():
    lists = pd.DataFrame(
        {
            "request_type": "query",
            "request_id": ["q1"] * 3 + ["q2"] * 3 + ["q3"],
            "category": "bags",
            "context_text": ["black bag"] * 3 + ["acme bag"] * 3 + ["bag"],
            "attribute": ["fit", "colour", "brand", "brand", "colour", "fit", "colour"],
            "attribute_text": ["f", "c", "b", "b", "c", "f", "c"],
            "importance": [0.0, 2.0, 0.5, 3.0, 2.0, 1.0, 1.0],
            "model": [0.1, 0.9, 0.5, 0.1, 0.2, 0.3, 5.0],
        }
    )
    rows = listnet_rows(lists)
    assert rows[0] == {"query": "black bag", "docs": ["b", "c", "f"], "labels": [0.5, 2.0, 0.0]}
    assert [row["query"] for row in rows] == ["black bag", "acme bag", "bag"]
    agreement = list_agreement(lists, "model")
    # q1 agrees on every pair; q2 disagrees on every pair; q3 has one attribute: no list.
    assert agreement.to_dict() == pytest.approx({("query", "q1", "bags"): 1.0, ("query", "q2", "bags"): -1.0})
    constant = list_agreement(lists.assign(model=1.0), "model")
    assert (constant == 0.0).all()


def test_a_context_without_behaviour_takes_the_models_order_before_its_class(spark, planted):
    lists = ranked_frame(
        requests={("q2", "query"): ["b-red-Acme-slim"], ("q1", "query"): ["b-black-Acme-slim"]}
    )
    # The model says brand matters most to q2 (a new query naming a brand); q1 chose, so its own order.
    model = pd.DataFrame(
        {"request_type": "query", "request_id": ["q2", "q2", "q2", "q1"], "category": "bags"}
    ).assign(attribute=["colour", "brand", "fit", "fit"], importance=[0.2, 0.9, -0.1, 9.0])
    orders = planted_orders(
        spark, planted, lists, model=spark.createDataFrame(model), model_version="attributes-v1"
    )
    table = orders.set_index(["request_id", "attribute"]).sort_index()
    new = table.loc["q2"]
    assert (new["source"] == "model").all() and (new["model_version"] == "attributes-v1").all()
    assert new["rank"].to_dict() == {"brand": 1, "colour": 2, "fit": 3}
    assert new["importance"].to_dict() == pytest.approx({"brand": 0.9, "colour": 0.2, "fit": -0.1})
    chose = table.loc["q1"]
    assert (chose["source"] == "behaviour").all() and chose["model_version"].isna().all()
    assert chose["importance"].idxmax() == "colour"


def test_the_models_importance_is_scored_by_the_udf_as_in_process(spark, planted):
    frames, _ = planted
    values = attribute_values(frames["items"], CFG.item_fields)
    texts = attribute_texts(values)
    requests = spark.createDataFrame(
        pd.DataFrame({"request_type": "query", "request_id": ["q1", "q2"], "category": ["bags", "cups"]})
    )
    contexts = spark.createDataFrame(
        pd.DataFrame(
            {"request_type": "query", "request_id": ["q1", "q2"], "context_text": ["black bag", "red cup"]}
        )
    )
    verdict = AttributeModelVerdict(1, 1.0, 0.0)
    model = AttributeModel(tiny_artifact(), "tiny", verdict, 1, 0.0)
    rerank = RerankConfig(micro_batch_size=4)
    scored = model_importance(requests, texts, contexts, model, CFG, rerank).toPandas()
    assert set(zip(scored["category"], scored["attribute"], strict=True)) == {
        ("bags", "colour"),
        ("bags", "brand"),
        ("bags", "fit"),
        ("cups", "colour"),
        ("cups", "brand"),
    }
    pairs = scored.merge(texts.toPandas(), on=["category", "attribute"]).assign(
        context_text=lambda f: f["request_id"].map({"q1": "black bag", "q2": "red cup"})
    )
    spec = cross_encoder_spec(str(tiny_artifact()))
    settings = ScoringSettings.from_config(rerank.model_copy(update={"max_length": CFG.model_max_length}))
    direct = PairScorer.from_spec(spec, torch.device("cpu"), settings).score(
        pairs["context_text"].tolist(), pairs["attribute_text"].tolist()
    )
    np.testing.assert_allclose(pairs["importance"], direct, atol=1e-5)


def test_the_model_learns_from_contexts_that_chose_and_is_judged_on_held_out_ones(spark, planted, tmp_path):
    frames, importance = planted
    cfg = CFG.model_copy(
        update={
            "model_epochs": 1,
            "model_request_types": ["user", "query"],
            "model_min_choices": 1.0,
            "model_base_path": str(tiny_artifact()),
        }
    )

    def contexts_of(requests):
        return (
            requests.select("request_type", "request_id")
            .distinct()
            .withColumn("context_text", F.lit("a shopper"))
        )

    texts = attribute_texts(attribute_values(frames["items"], cfg.item_fields))
    model = train_attribute_model(importance, contexts_of, texts, cfg, RerankConfig(), RUN_DATE, tmp_path)
    eligible = eligible_lists(importance, cfg).toPandas()
    lists = eligible.drop_duplicates(["request_type", "request_id", "category"])
    assert model is not None and model.train_lists == int((~lists["heldout"]).sum()) > 0
    sized = eligible[eligible["heldout"]].groupby(["request_id", "category"]).size()
    assert model.verdict.lists == int((sized >= 2).sum())
    manifest = read_manifest(model.path)
    assert manifest.version == model.version and manifest.max_length == cfg.model_max_length
    assert manifest.metrics["train_lists"] == model.train_lists
    # Only contexts of the model's request types, with choices enough, teach it.
    queries_only = cfg.model_copy(update={"model_request_types": ["query"], "model_min_choices": 1e9})
    assert eligible_lists(importance, queries_only).count() == 0
    assert (
        train_attribute_model(
            importance, contexts_of, texts, queries_only, RerankConfig(), RUN_DATE, tmp_path
        )
        is None
    )


def test_the_step_trains_the_model_on_contexts_and_serves_only_requests_without_behaviour(
    spark, planted, tmp_path, monkeypatch
):
    frames, importance = planted
    cfg = CFG.model_copy(
        update={"model_epochs": 1, "model_min_choices": 1.0, "model_base_path": str(tiny_artifact())}
    )
    # Whatever a tiny random model's verdict, the serving path is what is tested here.
    monkeypatch.setattr(AttributeModelVerdict, "serves", property(lambda self: True))
    queries = pd.concat(
        [QUERIES, pd.DataFrame({"query_id": ["q2"], "query_text": ["acme bag"], "query_class": ["bags"]})]
    )
    lists = ranked_frame(
        requests={
            ("q1", "query"): ["b-black-Acme-slim", "s-red-Acme-slim", "cup"],  # chose bags and shoes
            ("q2", "query"): ["b-red-Acme-slim"],  # a new query
            ("cold", "user"): ["s-red-Acme-slim"],  # a shopper: not a request type the model serves
        }
    )
    model, rows = attribute_model_importance(
        frame_from_pandas(spark, lists, "ranked"),
        frames["items"],
        frames["interactions"],
        importance,
        cfg,
        RerankConfig(micro_batch_size=4),
        RUN_DATE,
        tmp_path,
        frames["users"],
        frame_from_pandas(spark, queries, "queries"),
    )
    assert model is not None and rows is not None
    served = rows.toPandas()
    # q1 chose in bags and shoes (its search session): the model orders only its cups; q2 everything.
    assert set(zip(served["request_id"], served["category"], strict=True)) == {("q1", "cups"), ("q2", "bags")}
    assert sorted(served.loc[served["request_id"] == "q2", "attribute"]) == ["brand", "colour", "fit"]
    assert served["importance"].notna().all()
