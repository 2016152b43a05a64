import datetime as dt
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from test_scoring import direct_scores
from tiny_reranker import TINY_VERSION, tiny_artifact

from llmrank_spark.config import RerankConfig
from llmrank_spark.events import ITEM_EVENTS
from llmrank_spark.lakehouse import check_schema, frame_from_pandas
from llmrank_spark.rerank import (
    MANIFEST_FILE,
    RETRIEVAL_VERSION,
    ZERO_SHOT_VERSION,
    ArtifactError,
    FusionHead,
    ServedModel,
    model_for,
    rerank_candidates,
    top_k_by_score,
)
from llmrank_spark.text import NEW_SHOPPER_CONTEXT, item_text_frame, user_context_frame

RUN_DATE = dt.date(2026, 11, 20)
ITEMS = pd.DataFrame(
    {
        "item_id": [f"i{n}" for n in range(8)],
        "title": [
            "Trail Runner",
            "Wool Beanie",
            "Leather Belt",
            "Garden Hose",
            "Canvas Tote",
            "Rain Jacket",
            "Desk Lamp",
            "Coffee Mug",
        ],
        "category": ["Shoes", "Hats", "Accessories", "Garden", "Bags", "Outerwear", "Home", "Kitchen"],
        "brand": ["Acme", "Zed", "Bolt", "Flow", None, "Acme", "Lumo", "Brew"],
        "attributes": [{"color": "red"}, {"size": "M"}, {}, None, {"material": "canvas"}, {}, {}, {}],
    }
)
EVENTS = pd.DataFrame(
    {
        "user_id": ["u1", "u1", "u2", "u1"],
        "item_id": ["i0", "i1", "i3", "i7"],
        "event_type": ["view", "purchase", "click", "view"],
        # u1's last event is after the run date: it must not be in the context.
        "event_ts": pd.to_datetime(["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-25"]),
    }
)
REQUESTS = {
    "u1": ["i2", "i3", "i4", "i5", "i6"],
    "u2": ["i0", "i1", "i2", "i5"],
    "u3": ["i1", "i4", "i6", "i7"],
}
CANDIDATES = pd.DataFrame(
    [
        {
            "run_date": RUN_DATE,
            "request_id": user,
            "request_type": "user",
            "item_id": item,
            "retrieval_rank": rank,
            "retrieval_score": 1.0 / rank,
            "sources": ["als", "popularity"],
            "source_ranks": {"als": rank, "popularity": rank + 1},
            "source_scores": {"als": 2.0 / rank, "popularity": 1.0},
        }
        for user, items in REQUESTS.items()
        for rank, item in enumerate(items, start=1)
    ]
)
TOP_K = 3


def tiny_config() -> RerankConfig:
    return RerankConfig(
        mode="cross_encoder", model_path=str(tiny_artifact()), top_k=TOP_K, micro_batch_size=4
    )


def run_rerank(
    spark,
    cfg: RerankConfig,
    candidates: pd.DataFrame = CANDIDATES,
    queries: pd.DataFrame | None = None,
    users: pd.DataFrame | None = None,
) -> pd.DataFrame:
    ranked = rerank_candidates(
        spark,
        frame_from_pandas(spark, candidates, "candidates"),
        frame_from_pandas(spark, ITEMS, "items"),
        frame_from_pandas(spark, EVENTS, "interactions"),
        cfg,
        RUN_DATE,
        queries=None if queries is None else frame_from_pandas(spark, queries, "queries"),
        users=None if users is None else frame_from_pandas(spark, users, "users"),
    ).ranked
    check_schema(ranked, "ranked", "rerank_candidates output")
    return ranked.toPandas().sort_values(["request_id", "rank"]).reset_index(drop=True)


def expected_scores(cfg: RerankConfig) -> pd.DataFrame:
    """Every candidate scored outside Spark: pure text builders plus the model run pair by pair."""
    texts = item_text_frame(ITEMS, cfg)
    history = EVENTS[EVENTS["event_ts"] < pd.Timestamp(RUN_DATE + dt.timedelta(days=1))].merge(
        ITEMS, on="item_id"
    )
    contexts = user_context_frame(history, cfg)
    pairs = CANDIDATES.merge(texts, on="item_id").merge(contexts, on="request_id", how="left")
    pairs["context_text"] = pairs["context_text"].fillna(NEW_SHOPPER_CONTEXT)
    return pairs.assign(score=direct_scores(pairs["context_text"].tolist(), pairs["item_text"].tolist()))


def test_ties_are_broken_by_retrieval_rank_then_item_id_never_by_input_order(spark):
    scored = pd.DataFrame(
        {
            "request_id": ["u1"] * 5 + ["u2"],
            "request_type": "user",
            "item_id": ["d", "c", "b", "a", "e", "a"],
            "score": [0.5, 0.9, 0.5, 0.5, 0.1, 0.0],
            "retrieval_rank": [2, 1, 3, 2, 4, 1],
            "retrieval_score": [0.5, 1.0, 0.3, 0.5, 0.2, 1.0],
            "sources": [["als"]] * 6,
        }
    )
    outputs = [
        top_k_by_score(spark.createDataFrame(scored.sample(frac=1, random_state=seed)), top_k=4)
        .toPandas()
        .sort_values(["request_id", "rank"], ignore_index=True)
        for seed in range(3)
    ]
    for output in outputs:
        pd.testing.assert_frame_equal(output, outputs[0])
    first = outputs[0][outputs[0].request_id == "u1"]
    assert first["item_id"].tolist() == ["c", "a", "d", "b"]
    assert first["rank"].tolist() == first["model_rank"].tolist() == [1, 2, 3, 4]
    assert outputs[0][outputs[0].request_id == "u2"]["rank"].tolist() == [1], "each request is ranked alone"


def test_the_served_score_of_a_batch_of_requests_is_each_request_scored_alone():
    """`ServedModel.scores` reads rows, not lists: a batch mixing requests (as Arrow hands it to the UDF)
    gets the scores each request gets alone. A type the version was not trained on keeps its score."""
    head = FusionHead(features=["als", ITEM_EVENTS], feature_weights=[2.0, 0.5], logit_weight=0.3, bias=0.1)
    served = ServedModel(served_types=frozenset({"user"}), head=head)
    rows = pd.DataFrame(
        {
            "request_type": ["user", "user", "query", "user"],
            "score": [1.0, -2.0, 0.7, 0.25],
            "source_ranks": [{"als": 1}, None, {"als": 3}, [("als", 2)]],
            ITEM_EVENTS: [3.0, None, 1.0, 0.0],
        }
    )
    batch = served.scores(rows)
    alone = np.concatenate([served.scores(rows.iloc[[i]]) for i in range(len(rows))])
    np.testing.assert_array_equal(batch, alone)
    als = np.array([1.0, 0.0, 0.0, 1.0 / np.log2(3.0)])
    events = np.log1p([3.0, 0.0, 0.0, 0.0])
    expected = 0.3 * rows["score"].to_numpy() + 2.0 * als + 0.5 * events + 0.1
    expected[2] = 0.7  # a query: not a type this version ranks
    np.testing.assert_allclose(batch, expected, rtol=1e-6)


def test_cross_encoder_mode_without_artifact_fails_before_scoring(spark):
    with pytest.raises(
        ArtifactError, match=r"rerank\.model_path is not set.*rerank\.mode=zero_shot_bi_encoder"
    ):
        run_rerank(spark, RerankConfig(mode="cross_encoder"))


def test_rerank_keeps_top_k_by_model_score_and_a_rerun_is_identical(spark):
    cfg = tiny_config()
    ranked = run_rerank(spark, cfg)
    expected = expected_scores(cfg)

    assert ranked.groupby("request_id").size().to_dict() == {"u1": TOP_K, "u2": TOP_K, "u3": TOP_K}
    assert (ranked["model_version"] == TINY_VERSION).all() and (ranked["run_date"] == RUN_DATE).all()
    for request, rows in ranked.groupby("request_id"):
        assert rows["rank"].tolist() == list(range(1, TOP_K + 1))
        best = expected[expected["request_id"] == request].nlargest(TOP_K, "score")
        assert rows["item_id"].tolist() == best["item_id"].tolist()
    merged = ranked.merge(expected, on=["request_id", "item_id"], suffixes=("", "_direct"))
    np.testing.assert_allclose(merged["score"], merged["score_direct"], atol=1e-4)
    assert (merged["retrieval_rank"] == merged["retrieval_rank_direct"]).all()
    assert merged["sources"].map(list).tolist() == [["als", "popularity"]] * len(merged)

    pd.testing.assert_frame_equal(run_rerank(spark, cfg), ranked)


def test_a_model_trained_with_a_user_template_is_served_with_its_users_text(spark, tmp_path):
    artifact = shutil.copytree(tiny_artifact(), tmp_path / "stated")
    manifest = json.loads((artifact / MANIFEST_FILE).read_text())
    (artifact / MANIFEST_FILE).write_text(json.dumps({**manifest, "user_template": "{segment} shopper"}))
    users = pd.DataFrame({"user_id": ["u1", "u3"], "segment": ["eco", "tech"]})
    ranked = run_rerank(spark, tiny_config().model_copy(update={"model_path": str(artifact)}), users=users)

    expected = expected_scores(tiny_config())
    # u2 has no users row: its context is its history alone.
    stated = expected["request_id"].map({"u1": "eco shopper. ", "u3": "tech shopper. "}).fillna("")
    contexts = (stated + expected["context_text"]).tolist()
    expected = expected.assign(score=direct_scores(contexts, expected["item_text"].tolist()))
    merged = ranked.merge(expected, on=["request_id", "item_id"], suffixes=("", "_direct"))
    assert len(merged) == len(ranked) == 3 * TOP_K
    np.testing.assert_allclose(merged["score"], merged["score_direct"], atol=1e-4)
    # The user text moves the scores: without it, u1's and u3's items score otherwise.
    plain = merged.merge(expected_scores(tiny_config()), on=["request_id", "item_id"])["score_y"]
    assert not np.allclose(merged["score"], plain, atol=1e-4)


def test_a_model_is_served_with_the_history_settings_it_was_trained_with(tmp_path):
    """How many recent items and profile categories the context states are part of the text the model
    learned; an artifact written before they were recorded serves with the config's recent items."""
    artifact = shutil.copytree(tiny_artifact(), tmp_path / "recorded")
    manifest = json.loads((artifact / MANIFEST_FILE).read_text())
    for key in ("context_items", "profile_categories"):
        manifest.pop(key)
    (artifact / MANIFEST_FILE).write_text(json.dumps(manifest))
    cfg = tiny_config().model_copy(
        update={"model_path": str(artifact), "context_items": 5, "profile_categories": 3}
    )
    _, served = model_for(cfg)
    assert (served.context_items, served.profile_categories) == (5, 0)

    (artifact / MANIFEST_FILE).write_text(
        json.dumps({**manifest, "context_items": 0, "profile_categories": 2})
    )
    _, served = model_for(cfg)
    assert (served.context_items, served.profile_categories) == (0, 2)


def test_query_requests_are_scored_against_the_query_text_and_need_the_queries_table(spark):
    cfg = tiny_config()
    query_candidates = CANDIDATES[CANDIDATES["request_id"] == "u3"].assign(
        request_id="q1", request_type="query"
    )
    queries = pd.DataFrame({"query_id": ["q1"], "query_text": ["warm hat for winter"]})
    ranked = run_rerank(spark, cfg, query_candidates, queries)

    texts = item_text_frame(ITEMS, cfg).set_index("item_id")["item_text"]
    direct = direct_scores(["warm hat for winter"] * len(ranked), texts[ranked["item_id"]].tolist())
    np.testing.assert_allclose(ranked["score"], direct, atol=1e-4)
    assert (ranked["request_type"] == "query").all()

    # Without its queries row a query request is not ranked; test_reliability checks it is rejected.
    assert run_rerank(spark, cfg, query_candidates).empty


def test_a_version_trained_on_users_only_serves_query_lists_in_their_retrieval_order(spark):
    """A model that never saw a search query ranks queries worse than BM25 (docs/results.md): its
    query lists keep the retrieval order and say so in model_version; its user lists are its own."""
    users_only = RerankConfig(
        mode="cross_encoder",
        model_path=str(tiny_artifact(request_types=("user",))),
        top_k=TOP_K,
        micro_batch_size=4,
    )
    query_candidates = CANDIDATES[CANDIDATES["request_id"] == "u3"].assign(request_type="query")
    queries = pd.DataFrame({"query_id": ["u3"], "query_text": ["warm hat for winter"]})
    ranked = run_rerank(spark, users_only, pd.concat([CANDIDATES, query_candidates]), queries)

    searched = ranked[ranked.request_type == "query"].sort_values("rank")
    assert (
        searched["item_id"].tolist()
        == query_candidates.sort_values("retrieval_rank")["item_id"].head(TOP_K).tolist()
    )
    assert (searched["model_version"] == RETRIEVAL_VERSION).all()
    shoppers = ranked[ranked.request_type == "user"]
    assert (shoppers["model_version"] != RETRIEVAL_VERSION).all()
    served = run_rerank(spark, users_only)
    pd.testing.assert_frame_equal(  # the user lists are exactly what the model alone makes of them
        shoppers.sort_values(["request_id", "rank"]).reset_index(drop=True)[
            ["request_id", "item_id", "score"]
        ],
        served.sort_values(["request_id", "rank"]).reset_index(drop=True)[["request_id", "item_id", "score"]],
    )


@pytest.mark.slow
def test_zero_shot_mode_says_so_in_model_version(spark):
    ranked = run_rerank(spark, RerankConfig(mode="zero_shot_bi_encoder", top_k=2))
    assert (ranked["model_version"] == ZERO_SHOT_VERSION).all()
    assert len(ranked) == 2 * len(REQUESTS)
    assert ranked["score"].between(-1.0, 1.0).all()
