"""The query fusion: its inputs per candidate, its out-of-fold verdict, and the rerank step serving it."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from test_ranking import CANDIDATES, EVENTS, ITEMS, RUN_DATE, TOP_K, expected_scores
from tiny_reranker import tiny_artifact

from llmrank_spark.config import RerankConfig, TrainConfig
from llmrank_spark.lakehouse import frame_from_pandas
from llmrank_spark.rerank import MANIFEST_FILE, read_manifest, rerank_candidates
from llmrank_spark.rerank.query_fusion import QUERY_FUSION_INPUTS, query_fusion_inputs
from llmrank_spark.rerank.query_lexicon import QueryLexicon
from llmrank_spark.training.query_fusion import fit_query_fusion, train_query_fusion
from llmrank_spark.training.query_lists import heldout_queries

# "red" names the colour red, "hat" the category Hats.
LEXICON = QueryLexicon({"red": {("color", "red"): 0.9}, "hat": {("category", "Hats"): 0.8}})


def test_inputs_read_each_retriever_the_item_events_and_the_named_values():
    rows = pd.DataFrame(
        {
            "query_text": ["red hat"] * 3,
            "item_id": ["i0", "i1", "i2"],
            "category": ["Shoes", "Hats", "Accessories"],
            # Arrow hands a map over as a dict or as (key, value) pairs: both are read.
            "attributes": [{"color": "red"}, [("size", "M")], None],
            "source_scores": [{"lexical": 7.5, "query_semantic": 0.5}, [("query_semantic", 0.8)], None],
            "retrieval_rank": [1, 2, 3],
            "item_events": [3.0, None, 0.0],
        },
        index=[10, 11, 12],
    )
    inputs = query_fusion_inputs(rows, LEXICON)
    assert list(inputs.columns) == list(QUERY_FUSION_INPUTS) and list(inputs.index) == [10, 11, 12]
    assert inputs["score_lexical"].iloc[0] == 7.5 and np.isnan(inputs["score_lexical"].iloc[1])
    assert inputs["score_query_semantic"].tolist()[:2] == [0.5, 0.8]
    assert np.isnan(inputs["score_query_semantic"].iloc[2])  # proposed by nobody: LightGBM's missing
    assert inputs["item_events"].tolist() == [3.0, 0.0, 0.0]
    # The query names red (0.9) and Hats (0.8): the red shoe has the colour, the hat the category.
    np.testing.assert_allclose(inputs["lexicon_matched"], [0.9, 0.8, 0.0])
    np.testing.assert_allclose(inputs["lexicon_share"], [0.9 / 1.7, 0.8 / 1.7, 0.0])
    assert inputs["lexicon_category"].tolist() == [0.0, 1.0, 0.0]
    # The shoe and the belt are in another category than the named one; the hat has no colour at all.
    np.testing.assert_allclose(inputs["lexicon_contradicted"], [0.8, 0.0, 0.8])


def test_the_lexicon_round_trips_through_its_json():
    again = QueryLexicon.from_json(LEXICON.to_json())
    assert again == LEXICON
    assert again.named("Red HAT") == {("color", "red"): 0.9, ("category", "Hats"): 0.8}


def _judged_lists(queries: int, seed: int) -> pd.DataFrame:
    """Lists of 12 in a retrieval order that knows nothing; the items the lexicon matches are the
    relevant ones (grade 1, else 0), as for a query naming a value retrieval overlooked."""
    rng = np.random.default_rng(seed)
    rows = []
    for query in range(queries):
        matched = rng.random(12) < 0.25
        matched[rng.integers(12)] = True
        for rank, hit in enumerate(matched, start=1):
            rows.append(
                {
                    "list_id": f"q{query:03d}",
                    "item_id": f"i{rank:02d}",
                    "label": float(hit),
                    "score_lexical": rng.normal(),
                    "score_query_semantic": rng.normal(),
                    "retrieval_rank": float(rank),
                    "item_events": float(rng.integers(0, 9)),
                    "lexicon_matched": 0.9 * hit,
                    "lexicon_share": 0.5 * hit,
                    "lexicon_category": float(hit),
                    "lexicon_contradicted": 0.0 if hit else 0.5,
                }
            )
    return pd.DataFrame(rows)


def test_the_fusion_is_judged_out_of_fold_and_ranks_queries_only_when_it_beats_retrieval():
    cfg = TrainConfig(query_fusion_trees=20)
    result = train_query_fusion(_judged_lists(40, 0), LEXICON, cfg)
    assert result is not None and result.verdict.requests == 40
    assert result.verdict.promoted and result.verdict.version_ndcg > result.verdict.retrieval_ndcg
    assert result.fusion.model.spec.inputs == list(QUERY_FUSION_INPUTS)
    assert "ranks queries" in result.describe()
    assert result.metrics()["query_fusion_gate_requests"] == 40.0
    # Labels the inputs say nothing about: the out-of-fold order cannot beat retrieval beyond chance.
    noise = _judged_lists(40, 1)
    noise["label"] = np.random.default_rng(2).permutation(noise["label"].to_numpy())
    noise[["lexicon_matched", "lexicon_share", "lexicon_category", "lexicon_contradicted"]] = 0.0
    unearned = train_query_fusion(noise, LEXICON, cfg)
    assert unearned is not None and not unearned.verdict.promoted
    # Fewer than two queries a fold: nothing is judged.
    assert train_query_fusion(_judged_lists(9, 0), LEXICON, cfg) is None


@pytest.fixture(scope="module")
def query_fused_artifact(tmp_path_factory):
    """The tiny BERT with a query fusion fitted on made-up lists that follow the lexicon."""
    result = train_query_fusion(_judged_lists(40, 0), LEXICON, TrainConfig(query_fusion_trees=20))
    assert result is not None
    path = tmp_path_factory.mktemp("query-fused") / "query-fused"
    shutil.copytree(tiny_artifact(), path)
    result.fusion.save(path)
    manifest = read_manifest(path).model_copy(
        update={
            "version": "query-fused",
            "query_fusion": result.fusion.model.spec,
            "request_types": ["user", "query"],
        }
    )
    (path / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return path, result.fusion


def test_the_rerank_step_ranks_query_lists_by_the_query_fusion_and_users_by_bert(spark, query_fused_artifact):
    path, fusion = query_fused_artifact
    # u3's list again as a query, "red hat": the retrieval puts i1 (a hat) first, i0 (red) second.
    searched = pd.DataFrame(
        {
            "run_date": RUN_DATE,
            "request_id": "q-red-hat",
            "request_type": "query",
            "item_id": ["i1", "i4", "i6", "i0", "i7"],
            "retrieval_rank": [1, 2, 3, 4, 5],
            "retrieval_score": [1.0, 0.5, 0.33, 0.25, 0.2],
            "sources": [["lexical"]] * 5,
            "source_ranks": [{"lexical": rank} for rank in range(1, 6)],
            "source_scores": [{"lexical": 10.0 - rank} for rank in range(1, 6)],
        }
    )
    served = RerankConfig(mode="cross_encoder", model_path=str(path), top_k=TOP_K, micro_batch_size=4)
    ranked = rerank_candidates(
        spark,
        frame_from_pandas(spark, pd.concat([CANDIDATES, searched], ignore_index=True), "candidates"),
        frame_from_pandas(spark, ITEMS, "items"),
        frame_from_pandas(spark, EVENTS, "interactions"),
        served,
        RUN_DATE,
        queries=frame_from_pandas(
            spark, pd.DataFrame({"query_id": ["q-red-hat"], "query_text": ["red hat"]}), "queries"
        ),
    ).ranked.toPandas()
    by_query = ranked[ranked["request_type"] == "query"].sort_values("rank")
    events = pd.Series({"i0": 1.0, "i1": 1.0})  # EVENTS up to the run date (i7's is after it)
    rows = searched.merge(ITEMS[["item_id", "category", "attributes"]], on="item_id").assign(
        query_text="red hat", item_events=lambda frame: frame["item_id"].map(events)
    )
    expected = pd.Series(fusion.scores(rows), index=rows["item_id"])
    assert by_query["item_id"].tolist() == expected.sort_values(ascending=False).index[:TOP_K].tolist()
    np.testing.assert_allclose(by_query["score"], expected[by_query["item_id"]].to_numpy(), atol=1e-9)
    assert set(by_query["item_id"][:2]) == {"i0", "i1"}  # the items with a value the query names
    assert set(ranked["model_version"]) == {"query-fused"}
    # User lists are scored by BERT exactly as the same weights score them pair by pair.
    users = ranked[ranked["request_type"] == "user"].merge(
        expected_scores(served), on=["request_id", "item_id"], suffixes=("", "_expected")
    )
    assert len(users) == TOP_K * 3
    np.testing.assert_allclose(users["score"], users["score_expected"], atol=1e-4)


def test_the_train_step_fits_the_query_fusion_on_the_held_out_queries_lists_as_served(spark, config):
    """`fit_query_fusion`: the lexicon from the training queries, the fusion on the held-out queries'
    lists retrieved by the candidates step's own query retrievers and blend."""
    colours, categories = ["red", "blue", "green"], ["boots", "bags"]
    items = pd.DataFrame(
        {
            "item_id": [f"i{n:02d}" for n in range(24)],
            "title": [f"{categories[n % 2]} model {n}" for n in range(24)],
            "category": [categories[n % 2] for n in range(24)],
            "attributes": [{"colour": colours[n % 3]} for n in range(24)],
        }
    )
    # "crimson" says red, a word no item holds; every item of the catalogue is judged for every query.
    words = {"red": "crimson", "blue": "blue", "green": "green"}
    asked = [(colour, category) for colour in colours for category in categories] * 7
    queries = pd.DataFrame(
        {
            "query_id": [f"q{n:02d}" for n in range(len(asked))],
            "query_text": [f"{words[colour]} {category}" for colour, category in asked],
        }
    )
    labels = pd.DataFrame(
        [
            (
                query_id,
                item.item_id,
                0 if item.category != category else 3 if item.attributes["colour"] == colour else 1,
            )
            for query_id, (colour, category) in zip(queries["query_id"], asked, strict=True)
            for item in items.itertuples()
        ],
        columns=["query_id", "item_id", "relevance"],
    )
    settings = config.model_copy(
        update={
            "candidates": config.candidates.model_copy(
                update={"n_per_request": 8, "query_encoder": "packaged"}
            ),
            "train": config.train.model_copy(update={"heldout_query_share": 0.5, "query_fusion_trees": 20}),
        }
    )
    events = pd.DataFrame(
        {
            "user_id": ["u1"],
            "item_id": ["i00"],
            "event_type": ["view"],
            "event_ts": [pd.Timestamp("2026-11-01")],
        }
    )
    built = {
        "judged_queries": queries,
        "query_labels": labels,
        "item_values": items[["item_id", "category", "attributes"]],
        "item_events": pd.DataFrame({"item_id": ["i00"], "item_events": [1.0]}),
    }
    result = fit_query_fusion(
        spark,
        frame_from_pandas(spark, items, "items"),
        frame_from_pandas(spark, events, "interactions"),
        settings,
        built,
        None,
        None,
    )
    held = heldout_queries(queries["query_id"], 0.5)
    assert result is not None and result.verdict.requests == held.sum()
    assert result.fusion.lexicon.named("crimson boots") == {
        ("colour", "red"): 1.0,
        ("category", "boots"): 1.0,
    }
    assert 0 < result.verdict.retrieval_ndcg <= 1 and 0 < result.verdict.version_ndcg <= 1
