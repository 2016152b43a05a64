import datetime as dt

import numpy as np
import pandas as pd
import pytest
from test_scoring import direct_scores
from test_training import tiny_with_head
from tiny_reranker import TINY_VERSION, tiny_artifact

from llmrank_spark.config import AttributesConfig, RerankConfig
from llmrank_spark.explain import (
    attribute_orders,
    item_attributes,
    occluded_item,
    occlusion_variants,
    order_attributes,
    orders_by_segment,
)
from llmrank_spark.lakehouse import ContractError, check_schema, frame_from_pandas
from llmrank_spark.rerank import FusionHead
from llmrank_spark.text import item_text_frame, render_item_texts, user_context_frame

RUN_DATE = dt.date(2026, 11, 20)
ITEMS = pd.DataFrame(
    {
        "item_id": ["boots", "bare", "tee", "mug", "lamp"],
        "title": [
            "Acme Waterproof Leather Hiking Boots, Brown",
            "Plain Thing",
            "Slim T-Shirt",
            "Zed Mug",
            "Bolt Lamp",
        ],
        "category": ["hiking boots", "misc", "t-shirts", "kitchen", "home"],
        "brand": ["Acme", None, None, "Zed", "Bolt"],
        "attributes": [
            {"colour": "brown", "material": "leather", "waterproofing": "waterproof"},
            {},
            {"fit": "slim"},
            None,
            {f"a{n}": f"v{n}" for n in range(7)},
        ],
    }
)
EVENTS = pd.DataFrame(
    {
        "user_id": ["u1", "u1", "u2"],
        "item_id": ["boots", "tee", "mug"],
        "event_type": ["view", "purchase", "click"],
        "event_ts": pd.to_datetime(["2026-11-01", "2026-11-02", "2026-11-03"]),
    }
)
QUERIES = pd.DataFrame(
    {"query_id": ["q1"], "query_text": ["waterproof leather boots"], "query_class": ["hiking boots"]}
)
REQUESTS = {
    ("u1", "user"): ["boots", "bare", "tee", "lamp"],
    ("u2", "user"): ["mug", "boots", "bare"],
    ("q1", "query"): ["boots", "tee"],
}
CFG = AttributesConfig(top_k_items=3, max_attributes=4)


def ranked_frame(
    model_version: str = TINY_VERSION, requests: dict[tuple[str, str], list[str]] = REQUESTS
) -> pd.DataFrame:
    """A `ranked` partition holding each request's items in the order given."""
    return pd.DataFrame(
        [
            {
                "run_date": RUN_DATE,
                "request_id": request,
                "request_type": kind,
                "item_id": item,
                "rank": rank,
                "score": 1.0 / rank,
                "model_version": model_version,
                "retrieval_rank": rank,
                "retrieval_score": 1.0,
                "sources": ["als"],
            }
            for (request, kind), items in requests.items()
            for rank, item in enumerate(items, start=1)
        ]
    )


def tiny_config() -> RerankConfig:
    return RerankConfig(mode="cross_encoder", model_path=str(tiny_artifact()), micro_batch_size=4)


def item(item_id: str) -> dict:
    return ITEMS.set_index("item_id").loc[item_id].to_dict() | {"item_id": item_id}


def test_scored_attributes_are_what_the_item_text_shows_brand_first_at_most_m():
    rerank = RerankConfig()
    assert item_attributes(item("boots"), rerank, CFG) == [
        ("brand", "Acme"),
        ("colour", "brown"),
        ("material", "leather"),
        ("waterproofing", "waterproof"),
    ]
    assert item_attributes(item("bare"), rerank, CFG) == []
    assert item_attributes(item("mug"), rerank, CFG) == [("brand", "Zed")]
    assert item_attributes(item("lamp"), rerank, CFG) == [
        ("brand", "Bolt"),
        ("a0", "v0"),
        ("a1", "v1"),
        ("a2", "v2"),
    ]
    # The text shows 6 attributes (rerank.item_attributes); one it does not show is never scored.
    assert len(item_attributes(item("lamp"), rerank, AttributesConfig(max_attributes=50))) == 1 + 6
    # A template without {brand} does not show the brand: it cannot matter, so it is not scored.
    no_brand = RerankConfig(item_template="{title}. {attributes}")
    assert item_attributes(item("mug"), no_brand, CFG) == []


def test_occlusion_removes_the_entry_and_every_mention_of_the_value_and_nothing_else():
    rerank = RerankConfig()
    variants = occlusion_variants(ITEMS[ITEMS["item_id"] == "boots"], rerank, CFG)
    texts = dict(zip(variants["attribute"].fillna("(full)"), variants["item_text"], strict=True))
    assert texts["(full)"] == item_text_frame(ITEMS, rerank)["item_text"][0]
    assert texts["(full)"] == (
        "Acme Waterproof Leather Hiking Boots, Brown. Brand: Acme. Category: hiking boots. "
        "colour: brown, material: leather, waterproofing: waterproof"
    )
    assert texts["material"] == (
        "Acme Waterproof Hiking Boots, Brown. Brand: Acme. Category: hiking boots. "
        "colour: brown, waterproofing: waterproof"
    )
    assert texts["colour"] == (
        "Acme Waterproof Leather Hiking Boots. Brand: Acme. Category: hiking boots. "
        "material: leather, waterproofing: waterproof"
    )
    assert texts["brand"] == (
        "Waterproof Leather Hiking Boots, Brown. Brand: unknown. Category: hiking boots. "
        "colour: brown, material: leather, waterproofing: waterproof"
    )
    assert variants.set_index("attribute")["value"].dropna().to_dict() == {
        "brand": "Acme",
        "colour": "brown",
        "material": "leather",
        "waterproofing": "waterproof",
    }
    # Removing several at once (the faithfulness check removes two).
    both = occluded_item(item("boots"), ["material", "waterproofing"], rerank, CFG)
    assert render_item_texts(pd.DataFrame([both]), rerank.item_template, rerank.item_attributes)[0] == (
        "Acme Hiking Boots, Brown. Brand: Acme. Category: hiking boots. colour: brown"
    )


def test_occlusion_never_lets_a_hidden_attribute_into_the_text():
    rerank = RerankConfig(item_attributes=2)
    variants = occlusion_variants(ITEMS[ITEMS["item_id"] == "lamp"], rerank, CFG)
    assert variants["attribute"].tolist() == [None, "brand", "a0", "a1"]
    assert variants["item_text"].tolist()[2].endswith("Category: home. a1: v1")  # not "a1: v1, a2: v2"


def test_items_without_attributes_yield_no_variants():
    assert occlusion_variants(ITEMS[ITEMS["item_id"] == "bare"], RerankConfig(), CFG).empty
    assert occlusion_variants(ITEMS.iloc[:0], RerankConfig(), CFG).columns.tolist() == [
        "item_id",
        "attribute",
        "value",
        "item_text",
    ]


def test_order_is_score_drop_highest_first_ties_by_name():
    keys = {"request_id": "u1", "request_type": "user", "item_id": "boots"}
    scored = pd.DataFrame(
        [
            {**keys, "attribute": "material", "value": "leather", "score": 0.5},
            {**keys, "attribute": None, "value": None, "score": 0.9},
            {**keys, "attribute": "colour", "value": "brown", "score": 1.2},
            {**keys, "attribute": "brand", "value": "Acme", "score": 0.5},
        ]
    )
    order = order_attributes(scored)
    assert order["attribute"].tolist() == ["brand", "material", "colour"]
    np.testing.assert_allclose(order["importance"], [0.4, 0.4, -0.3])
    assert order["rank"].tolist() == [1, 2, 3]


def run_attributes(spark, rerank: RerankConfig, ranked: pd.DataFrame | None = None) -> pd.DataFrame:
    orders = attribute_orders(
        spark,
        frame_from_pandas(spark, ranked_frame() if ranked is None else ranked, "ranked"),
        frame_from_pandas(spark, ITEMS, "items"),
        frame_from_pandas(spark, EVENTS, "interactions"),
        rerank,
        CFG,
        RUN_DATE,
        queries=frame_from_pandas(spark, QUERIES, "queries"),
    )
    check_schema(orders, "attribute_order", "attribute_orders output")
    return orders.toPandas().sort_values(["request_id", "item_id", "rank"], ignore_index=True)


def test_importance_is_the_direct_score_drop_and_edge_items_are_handled(spark, tmp_path):
    # The tiny model with a fusion head: the served score is 0.5 * logit + retrieval terms, so a drop in
    # the served score is half the drop in the logit.
    head = FusionHead(features=["als"], logit_weight=0.5, feature_weights=[3.0], bias=1.0)
    fused = tiny_with_head(tmp_path / "fused", head, version="tiny-fused-attr")
    rerank = RerankConfig(mode="cross_encoder", model_path=str(fused), micro_batch_size=4)
    orders = run_attributes(spark, rerank, ranked_frame("tiny-fused-attr"))

    # Top-3 only: u1's fourth item (lamp) gets no rows; "bare" has no attributes: no rows, no error.
    assert set(orders["item_id"]) == {"boots", "tee", "mug"}
    assert (orders["model_version"] == "tiny-fused-attr").all() and (orders["run_date"] == RUN_DATE).all()
    for _, rows in orders.groupby(["request_id", "item_id"]):
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
        assert rows["importance"].is_monotonic_decreasing
    single = orders[orders["item_id"] == "tee"]
    assert single[["attribute", "value", "rank"]].values.tolist() == [["fit", "slim", 1]] * 2

    # Exactness: each importance equals the head's logit weight times logit(full text) - logit(text
    # without the attribute), the tiny model (same seeded weights) run pair by pair outside Spark.
    variants = occlusion_variants(ITEMS, rerank, CFG)
    full = variants[variants["attribute"].isna()].set_index("item_id")["item_text"]
    without = variants.dropna(subset=["attribute"]).set_index(["item_id", "attribute"])["item_text"]
    history = EVENTS.merge(ITEMS, on="item_id")
    contexts = user_context_frame(history, rerank).set_index("request_id")["context_text"].to_dict()
    contexts["q1"] = QUERIES["query_text"][0]
    context = [contexts[r] for r in orders["request_id"]]
    expected = head.logit_weight * (
        direct_scores(context, full[orders["item_id"]].tolist())
        - direct_scores(
            context, [without[(i, a)] for i, a in zip(orders["item_id"], orders["attribute"], strict=True)]
        )
    )
    np.testing.assert_allclose(orders["importance"], expected, atol=1e-4)
    assert (np.abs(expected) > 1e-3).any(), "the tiny model must tell the variants apart"


def test_a_ranking_by_another_model_is_refused(spark):
    with pytest.raises(ContractError, match=r"scored by \['other-v1'\].*re-run `llmrank rerank`"):
        run_attributes(spark, tiny_config(), ranked_frame("other-v1"))


def test_segment_table_ranks_mean_importance_per_category_and_segment(spark):
    def row(request, kind, item_id, attribute, importance):
        return {
            "run_date": RUN_DATE,
            "request_id": request,
            "request_type": kind,
            "item_id": item_id,
            "attribute": attribute,
            "value": "x",
            "importance": importance,
            "rank": 1,
            "model_version": "m1",
        }

    orders = pd.DataFrame(
        [
            row("u1", "user", "boots", "material", 0.6),
            row("u1", "user", "boots", "colour", 0.1),
            row("u2", "user", "boots", "material", 0.0),
            row("u2", "user", "boots", "colour", 0.5),
            row("u3", "user", "boots", "colour", 0.3),
            row("u1", "user", "tee", "fit", 0.2),
            row("u9", "user", "tee", "fit", 0.7),  # not in users: segment unknown
            row("q1", "query", "boots", "material", 0.9),
        ]
    )
    users = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "segment": ["eco", "eco", "style"]})
    table = orders_by_segment(
        frame_from_pandas(spark, orders, "attribute_order"),
        frame_from_pandas(spark, ITEMS, "items"),
        frame_from_pandas(spark, users, "users"),
        frame_from_pandas(spark, QUERIES, "queries"),
    )
    check_schema(table, "attribute_order_by_segment", "orders_by_segment output")
    result = table.toPandas().sort_values(["segment_type", "segment", "category", "rank"], ignore_index=True)
    rows = result[["segment_type", "segment", "category", "attribute", "support", "rank"]].values.tolist()
    assert rows == [
        ["query_class", "hiking boots", "hiking boots", "material", 1, 1],
        ["user_segment", "eco", "hiking boots", "colour", 2, 1],
        ["user_segment", "eco", "hiking boots", "material", 2, 2],
        ["user_segment", "eco", "t-shirts", "fit", 1, 1],
        ["user_segment", "style", "hiking boots", "colour", 1, 1],
        ["user_segment", "unknown", "t-shirts", "fit", 1, 1],
    ]
    np.testing.assert_allclose(result["mean_importance"], [0.9, 0.3, 0.3, 0.2, 0.3, 0.7])
    assert (result["model_version"] == "m1").all() and (result["run_date"] == RUN_DATE).all()
