"""The query encoder: its training triples, the artifact that ships it and the retriever that serves it."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from tiny_reranker import build_tiny_artifact, register_tiny_version

from llmrank_spark.config import CandidatesConfig, TrainConfig
from llmrank_spark.lakehouse import frame_from_pandas
from llmrank_spark.rerank import (
    MANIFEST_FILE,
    QUERY_ENCODER_DIR,
    ArtifactError,
    load_sentence_encoder,
    query_encoder_dir,
    read_manifest,
)
from llmrank_spark.retrieval import prepare_inputs
from llmrank_spark.retrieval.semantic import Encoder, QueryEncoder, query_semantic_candidates
from llmrank_spark.text import render_item_texts
from llmrank_spark.training.query_encoder import encoder_triples, retrieved_lists, train_query_encoder
from llmrank_spark.training.train import QueryEncoderFiles

ITEM_TEXT = pd.Series(
    {
        "b1": "red leather boots",
        "b2": "red suede boots",
        "b3": "black rubber boots",
        "b4": "brown wool boots",
        "s1": "red cotton shirt",
        "s2": "blue linen shirt",
    }
)


def _queries_and_labels() -> tuple[pd.DataFrame, pd.DataFrame]:
    queries = pd.DataFrame(
        {"query_id": ["red", "vague", "only-best"], "query_text": ["red boots", "boots", "red shirt"]}
    )
    labels = pd.DataFrame(
        {
            "query_id": ["red"] * 5 + ["vague"] * 2 + ["only-best"] * 2,
            "item_id": ["b1", "b2", "b3", "b4", "s1", "b1", "b3", "s1", "s2"],
            "relevance": [3, 3, 1, 1, 0, 1, 1, 3, 0],
        }
    )
    return queries, labels


def test_triples_pair_each_best_item_with_a_category_only_negative():
    queries, labels = _queries_and_labels()
    triples = encoder_triples(queries, labels, ITEM_TEXT, per_query=8, rng=np.random.default_rng(0))
    # "vague" names no value (best grade 1) and "only-best" has no grade-1 item: neither teaches anything.
    assert (triples["anchor"] == "red boots").all()
    assert sorted(triples["positive"]) == ["red leather boots", "red suede boots"]
    assert set(triples["negative"]) <= {"black rubber boots", "brown wool boots"}
    capped = encoder_triples(queries, labels, ITEM_TEXT, per_query=1, rng=np.random.default_rng(0))
    assert len(capped) == 1


def test_retrieved_lists_rank_the_catalogue_by_cosine():
    encoder = load_sentence_encoder("cpu")
    queries = pd.DataFrame({"query_id": ["q"], "query_text": ["red leather boots"]})
    lists = retrieved_lists(encoder, queries, ITEM_TEXT, depth=10)
    assert lists["rank"].tolist() == list(range(1, len(ITEM_TEXT) + 1))  # depth capped by the catalogue
    assert lists["item_id"].iloc[0] == "b1"  # the item with the query's exact text
    assert sorted(lists["item_id"]) == sorted(ITEM_TEXT.index)


@pytest.fixture(scope="module")
def tiny_encoder_artifact(tmp_path_factory):
    """A tiny reranker artifact holding the packaged MiniLM briefly fine-tuned as its query encoder."""
    queries, labels = _queries_and_labels()
    triples = encoder_triples(queries, labels, ITEM_TEXT, per_query=8, rng=np.random.default_rng(0))
    heldout = labels.merge(queries, on="query_id")
    cfg = TrainConfig(query_encoder_batch_size=2, query_encoder_epochs=3)
    result = train_query_encoder(triples, heldout, ITEM_TEXT, cfg)
    path = build_tiny_artifact(tmp_path_factory.mktemp("artifact") / "v1")
    QueryEncoderFiles(result.encoder).save(path)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    (path / MANIFEST_FILE).write_text(json.dumps(manifest | {"query_encoder": True}))
    return path, result


@pytest.mark.slow
def test_the_fine_tuned_encoder_is_judged_on_held_out_queries_and_reads_back(tiny_encoder_artifact):
    path, result = tiny_encoder_artifact
    assert result.pairs == 2 and result.verdict.requests == 3
    assert 0.0 <= result.verdict.version_ndcg <= 1.0 and 0.0 <= result.verdict.retrieval_ndcg <= 1.0
    assert {"query_encoder_gate_ndcg@10", "query_encoder_seconds"} <= set(result.metrics())
    assert read_manifest(path).query_encoder
    loaded = load_sentence_encoder("cpu", query_encoder_dir(path))
    texts = ITEM_TEXT.tolist()
    np.testing.assert_allclose(loaded.encode(texts), result.encoder.encode(texts), atol=1e-5)
    packaged = load_sentence_encoder("cpu").encode(texts)
    assert not np.allclose(loaded.encode(texts), packaged, atol=1e-6)  # fine-tuning moved the weights


def test_an_artifact_stating_a_query_encoder_it_lacks_is_refused(tmp_path):
    path = build_tiny_artifact(tmp_path / "v1")
    assert query_encoder_dir(path) is None  # none stated: the packaged MiniLM serves
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    (path / MANIFEST_FILE).write_text(json.dumps(manifest | {"query_encoder": True}))
    with pytest.raises(ArtifactError, match=QUERY_ENCODER_DIR):
        read_manifest(path)


@pytest.mark.slow
def test_the_query_semantic_retriever_serves_the_artifacts_encoder(spark, tiny_encoder_artifact):
    path, result = tiny_encoder_artifact
    cfg = CandidatesConfig(semantic_item_template="{title}", semantic_item_attributes=0)
    items = pd.DataFrame(
        {
            "item_id": ITEM_TEXT.index,
            "title": ITEM_TEXT.to_numpy(),
            "category": ["boots"] * 4 + ["shirts"] * 2,
        }
    )
    events = pd.DataFrame(
        {"user_id": ["u"], "item_id": ["b1"], "event_type": ["view"], "event_ts": [dt.datetime(2026, 11, 1)]}
    )
    inputs = prepare_inputs(
        spark,
        frame_from_pandas(spark, items, "items"),
        frame_from_pandas(spark, events, "interactions"),
        None,
        cfg,
        dt.date(2026, 11, 20),
    )
    queries = pd.DataFrame({"request_id": ["q1", "q2"], "query_text": ["red boots", "linen shirt"]})
    encoder = QueryEncoder(Encoder("query-encoder@test", query_encoder_dir(path)))
    found = query_semantic_candidates(inputs, spark.createDataFrame(queries), 3, encoder).toPandas()
    texts = render_item_texts(items, cfg.semantic_item_template, 0)
    expected = retrieved_lists(
        result.encoder,
        queries.rename(columns={"request_id": "query_id"}),
        pd.Series(texts.to_numpy(), index=items["item_id"]),
        3,
    )
    found = found.sort_values(["request_id", "source_rank"])
    assert found["item_id"].tolist() == expected.sort_values(["request_id", "rank"])["item_id"].tolist()


@pytest.mark.slow
def test_the_candidates_step_uses_the_newest_registered_version_shipping_an_encoder(
    config, tiny_encoder_artifact, tmp_path
):
    from llmrank_spark.training import REJECTED, registered_query_encoder
    from llmrank_spark.training.registry import local_store

    assert registered_query_encoder(config) is None  # no registry yet: the packaged MiniLM
    assert not local_store(config).exists()  # and asking did not create one
    with_encoder, _ = tiny_encoder_artifact
    register_tiny_version(config, with_encoder, REJECTED)  # shoppers' gate rejected: the encoder still serves
    register_tiny_version(config, build_tiny_artifact(tmp_path / "v2", "tiny-v2"), REJECTED)
    served = registered_query_encoder(config)
    assert served is not None and served.directory is not None
    assert served.directory.endswith(QUERY_ENCODER_DIR) and served.name == "query-encoder@tiny-test-v1"
    np.testing.assert_allclose(
        load_sentence_encoder("cpu", served.directory).encode(["red boots"]),
        load_sentence_encoder("cpu", query_encoder_dir(with_encoder)).encode(["red boots"]),
        atol=1e-6,
    )
    packaged = config.model_copy(
        update={"candidates": config.candidates.model_copy(update={"query_encoder": "packaged"})}
    )
    assert registered_query_encoder(packaged) is None


@pytest.mark.slow
def test_the_candidates_step_retrieves_with_the_registered_encoder_and_keeps_its_vectors(
    spark, tmp_path, tiny_encoder_artifact
):
    from llmrank_spark.config import load_config
    from llmrank_spark.lakehouse import read_table
    from llmrank_spark.pipeline import steps
    from llmrank_spark.retrieval.item_vectors import encoder_name
    from llmrank_spark.training import REJECTED

    config = load_config(
        overrides=[
            f"lakehouse.root={tmp_path / 'lakehouse'}",
            "run.run_date=2026-10-16",
            "sample.n_items=100",
            "sample.n_users=50",
            "sample.n_events=1000",
            "sample.n_queries=10",
            "candidates.n_per_request=10",
            "candidates.als_max_iter=1",
            "candidates.als_rank=2",
        ]
    )
    steps.generate_sample(spark, config)
    register_tiny_version(config, tiny_encoder_artifact[0], REJECTED)
    run = steps.candidates(spark, config)
    n_items = read_table(spark, config, "items").count()
    expected = f"item vectors of query-encoder@tiny-test-v1: {n_items:,} encoded, 0 kept"
    assert any(line.startswith(expected) for line in run.notes), run.notes
    rows = read_table(spark, config, "item_embeddings").toPandas()
    assert rows.groupby("encoder").size().to_dict() == {
        encoder_name(): n_items,
        "query-encoder@tiny-test-v1": n_items,
    }
    candidates = read_table(spark, config, "candidates").toPandas()
    queries = candidates[candidates.request_type == "query"]
    assert queries.request_id.nunique() == 10 and (queries.groupby("request_id").size() == 10).all()
    assert "query_semantic" in set(queries["sources"].explode())


@pytest.mark.slow
def test_a_query_encoders_item_vectors_are_kept_beside_the_packaged_ones(
    spark, config, tiny_encoder_artifact
):
    from test_ranking import ITEMS

    from llmrank_spark.lakehouse import read_table
    from llmrank_spark.retrieval import refresh_item_vectors

    items = frame_from_pandas(spark, ITEMS, "items")
    packaged = refresh_item_vectors(spark, config, items, dt.date(2026, 11, 20))
    before = packaged.vectors.toPandas().set_index("item_id").embedding
    encoder = Encoder("query-encoder@test", query_encoder_dir(tiny_encoder_artifact[0]))
    first = refresh_item_vectors(spark, config, items, dt.date(2026, 11, 21), encoder)
    assert (first.encoded, first.kept) == (len(ITEMS), 0)  # its own key: nothing of the packaged one reused
    again = refresh_item_vectors(spark, config, items, dt.date(2026, 11, 22), encoder)
    assert (again.encoded, again.kept) == (0, len(ITEMS))
    rows = read_table(spark, config, "item_embeddings").toPandas()
    assert rows.groupby("encoder").size().to_dict() == {
        packaged.encoder.name: len(ITEMS),
        encoder.name: len(ITEMS),
    }
    kept = rows[rows.encoder == packaged.encoder.name].set_index("item_id").embedding
    assert all(np.array_equal(kept[item], before[item]) for item in ITEMS.item_id)  # untouched
    candidates = config.candidates
    texts = render_item_texts(ITEMS, candidates.semantic_item_template, candidates.semantic_item_attributes)
    texts = texts.tolist()
    expected = load_sentence_encoder("cpu", encoder.directory).encode(texts, normalize_embeddings=True)
    ours = again.vectors.toPandas().set_index("item_id").embedding.reindex(ITEMS.item_id)
    np.testing.assert_allclose(np.stack(ours.to_list()), expected, atol=1e-5)


def test_with_a_query_encoder_the_query_blend_leads_with_it_and_user_sources_keep_their_settings():
    cfg = CandidatesConfig()
    served = cfg.with_query_encoder()
    assert served.source_weights["query_semantic"] > served.source_weights["lexical"]
    assert served.quotas == {**cfg.quotas, "lexical": 5, "query_semantic": 10}
    assert {name: served.source_weights[name] for name in ("covisit", "als", "semantic")} == {
        name: cfg.source_weights[name] for name in ("covisit", "als", "semantic")
    }
