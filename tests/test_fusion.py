"""The learned fusion (LambdaMART) and the champion gate: what is trained is what is served, and a version
that does not beat the retrieval order is never served."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from test_ranking import CANDIDATES, EVENTS, ITEMS, RUN_DATE, TOP_K, expected_scores
from test_scoring import direct_scores
from tiny_reranker import build_tiny_artifact, register_tiny_version

from llmrank_spark.config import ConfigError, RerankConfig
from llmrank_spark.lakehouse import frame_from_pandas, write_table
from llmrank_spark.pipeline import steps
from llmrank_spark.rerank import (
    BERT_SCORE,
    FEATURES,
    MANIFEST_FILE,
    PRERANK_FILE,
    RETRIEVAL_VERSION,
    FusionHead,
    FusionModel,
    FusionSettings,
    fit_fusion,
    ranking_features,
    read_manifest,
    relevance_levels,
    rerank_candidates,
)
from llmrank_spark.text import item_text_frame
from llmrank_spark.training import (
    CHAMPION,
    CHAMPION_ALIAS,
    REJECTED,
    SERVES_BERT_TAG,
    artifact_dir,
    champion_version,
    decide,
    newest_version,
    registry_client,
    served_config,
)

INPUTS = ["signal", "noise"]
QUERY = pd.DataFrame({"query_id": ["u3"], "query_text": ["warm hat"]})


def _lists(n_lists: int, seed: int) -> pd.DataFrame:
    """Lists of 6 whose positive has the largest `signal` (plus noise); `noise` says nothing."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in range(n_lists):
        signal = rng.normal(size=6)
        best = int(np.argmax(signal + rng.normal(scale=0.3, size=6)))
        for j in range(6):
            rows.append((f"l{seed}-{n:03d}", f"i{j}", 1.0 if j == best else 0.0, signal[j], rng.normal()))
    return pd.DataFrame(rows, columns=["list_id", "item_id", "label", "signal", "noise"])


def _ndcg_of_first(lists: pd.DataFrame, scores: np.ndarray) -> float:
    """Share of lists whose positive scores highest."""
    scored = lists.assign(score=scores)
    top = scored.loc[scored.groupby("list_id")["score"].idxmax()]
    return float(top["label"].mean())


def test_lambdamart_learns_the_predictive_input_and_round_trips_through_its_text(tmp_path):
    train, validation = _lists(300, 0), _lists(80, 1)
    model = fit_fusion(train, validation, INPUTS, FusionSettings(trees=60, min_rows_in_leaf=5))
    test = _lists(100, 2)
    assert _ndcg_of_first(test, model.score(test)) > 0.6  # chance is 1/6
    assert model.importance()["signal"] > 0.8
    model.save(tmp_path)
    again = FusionModel.load(tmp_path, model.spec)
    np.testing.assert_array_equal(again.score(test), model.score(test))
    # A missing value is LightGBM's missing, never an error and never a NaN score.
    holes = test.assign(signal=np.where(np.arange(len(test)) % 3 == 0, np.nan, test["signal"]))
    assert np.isfinite(again.score(holes)).all()
    assert np.isfinite(again.score(test.assign(signal=np.nan, noise=np.nan))).all()


def test_graded_labels_become_lambdarank_levels():
    assert relevance_levels(np.array([0.0, 0.25, 0.5, 1.0, 1.7])).tolist() == [0, 1, 2, 4, 4]


@pytest.fixture(scope="module")
def fused_artifact(spark, tmp_path_factory):
    """The tiny BERT with a LambdaMART fusion fitted on the test lakehouse's features and its logits."""
    from llmrank_spark.config import CandidatesConfig

    path = build_tiny_artifact(tmp_path_factory.mktemp("fused") / "fused-v1", version="fused-v1")
    cfg = CandidatesConfig(als_rank=2, als_max_iter=2)
    candidates = frame_from_pandas(spark, CANDIDATES, "candidates")
    features = ranking_features(
        spark,
        candidates.select("request_type", "request_id", "item_id", "retrieval_rank", "source_ranks"),
        frame_from_pandas(spark, ITEMS, "items"),
        frame_from_pandas(spark, EVENTS, "interactions"),
        None,
        cfg,
        RUN_DATE,
    ).toPandas()
    from test_ranking import tiny_config

    direct = expected_scores(tiny_config().model_copy(update={"model_path": str(path)}))
    lists = features.merge(direct[["request_id", "item_id", "score"]], on=["request_id", "item_id"])
    lists = lists.rename(columns={"score": BERT_SCORE}).sort_values(["request_id", "item_id"])
    # A made-up label: the candidate the retrieval ranked first, so the trees have something to learn.
    lists["label"] = (lists["retrieval_rank"] == 1).astype(float)
    model = fit_fusion(
        lists,
        lists,
        [*FEATURES, BERT_SCORE],
        FusionSettings(trees=5, min_rows_in_leaf=1),
        list_column="request_id",
    )
    manifest = read_manifest(path).model_copy(update={"fusion": model.save(path)})
    (path / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return path, model, lists, cfg


def test_the_rerank_step_serves_the_fusion_exactly_as_it_scores_in_process(spark, config, fused_artifact):
    path, model, lists, cfg = fused_artifact
    for table, frame in (("candidates", CANDIDATES), ("items", ITEMS), ("interactions", EVENTS)):
        write_table(frame_from_pandas(spark, frame, table), config, table, RUN_DATE)
    served = config.model_copy(
        update={
            "candidates": cfg,
            "fairness": config.fairness.model_copy(update={"mode": "off"}),
            "rerank": config.rerank.model_copy(
                update={
                    "mode": "cross_encoder",
                    "model_path": str(path),
                    "top_k": TOP_K,
                    "micro_batch_size": 4,
                }
            ),
        }
    )
    run = steps.rerank(spark, served)
    assert "served model: fused-v1" in run.notes
    ranked = spark.read.format("delta").load(config.table_path("ranked")).toPandas()
    expected = lists.assign(expected=model.score(lists))
    merged = ranked.merge(expected, on=["request_id", "item_id"])
    assert len(merged) == TOP_K * 3 and set(ranked["model_version"]) == {"fused-v1"}
    np.testing.assert_allclose(merged["score"], merged["expected"], atol=1e-4)
    assert np.isfinite(ranked["score"]).all()


def test_a_version_ranking_queries_serves_them_through_its_head_and_users_through_its_fusion(
    spark, fused_artifact, tmp_path
):
    """The LambdaMART learns from shopper features a query does not have: query lists are scored by the
    BERT logit through the linear head (what the held-out query verdict measured), user lists as before."""
    path, model, lists, cfg = fused_artifact
    head = FusionHead(
        features=["lexical", "item_events"], logit_weight=2.0, feature_weights=[3.0, 0.0], bias=0.5
    )
    both = tmp_path / "fused-both"
    shutil.copytree(path, both)
    manifest = read_manifest(both).model_copy(
        update={"version": "fused-both", "fusion_head": head, "request_types": ["user", "query"]}
    )
    (both / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    searched = CANDIDATES[CANDIDATES["request_id"] == "u3"].assign(request_type="query")
    searched["source_ranks"] = [{"lexical": rank} for rank in searched["retrieval_rank"]]
    served = RerankConfig(mode="cross_encoder", model_path=str(both), top_k=TOP_K, micro_batch_size=4)
    ranked = rerank_candidates(
        spark,
        frame_from_pandas(spark, pd.concat([CANDIDATES, searched]), "candidates"),
        frame_from_pandas(spark, ITEMS, "items"),
        frame_from_pandas(spark, EVENTS, "interactions"),
        served,
        RUN_DATE,
        queries=frame_from_pandas(
            spark, pd.DataFrame({"query_id": ["u3"], "query_text": ["warm hat"]}), "queries"
        ),
        candidates_cfg=cfg,
    ).ranked.toPandas()

    query_rows = searched.merge(item_text_frame(ITEMS, served), on="item_id")
    logits = direct_scores(["warm hat"] * len(query_rows), query_rows["item_text"].tolist())
    expected = 2.0 * logits + 3.0 / np.log2(1.0 + query_rows["retrieval_rank"].to_numpy()) + 0.5
    by_query = ranked[ranked["request_type"] == "query"].merge(
        query_rows.assign(expected=expected), on="item_id"
    )
    assert len(by_query) == TOP_K
    np.testing.assert_allclose(by_query["score"], by_query["expected"], atol=1e-4)
    by_user = ranked[ranked["request_type"] == "user"].merge(
        lists.assign(expected=model.score(lists)), on=["request_id", "item_id"]
    )
    assert len(by_user) == TOP_K * 3 and set(ranked["model_version"]) == {"fused-both"}
    np.testing.assert_allclose(by_user["score"], by_user["expected"], atol=1e-4)


def test_the_cascade_scores_with_bert_only_the_preranks_first_candidates(spark, fused_artifact, tmp_path):
    """With a prerank (the features-only LambdaMART), each user's list is ordered by it and BERT scores only
    its first rerank.bert_depth candidates, which the fusion orders; past the depth a pair keeps its
    prerank score (BERT never read it). At depth 0 the prerank's order is served."""
    path, model, lists, cfg = fused_artifact
    cascaded = tmp_path / "cascaded"
    shutil.copytree(path, cascaded)
    # A made-up label the retrieval order gets wrong: each list's last candidate.
    last = lists.groupby("request_id")["retrieval_rank"].transform("max")
    lists = lists.assign(label=(lists["retrieval_rank"] == last).astype(float))
    prerank = fit_fusion(
        lists,
        lists,
        list(FEATURES),
        FusionSettings(trees=5, min_rows_in_leaf=1),
        list_column="request_id",
        file=PRERANK_FILE,
    )
    manifest = read_manifest(cascaded).model_copy(
        update={"version": "cascaded", "prerank": prerank.save(cascaded)}
    )
    (cascaded / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    expected = lists.assign(prerank=prerank.score(lists), fused=model.score(lists))
    expected["place"] = (
        expected.sort_values(["prerank", "retrieval_rank", "item_id"], ascending=[False, True, True])
        .groupby("request_id")
        .cumcount()
        + 1
    )

    def served(depth: int | None):
        result = rerank_candidates(
            spark,
            frame_from_pandas(spark, CANDIDATES, "candidates"),
            frame_from_pandas(spark, ITEMS, "items"),
            frame_from_pandas(spark, EVENTS, "interactions"),
            RerankConfig(
                mode="cross_encoder",
                model_path=str(cascaded),
                top_k=TOP_K,
                micro_batch_size=4,
                bert_depth=depth,
            ),
            RUN_DATE,
            candidates_cfg=cfg,
        )
        outcome = result.outcome.toPandas().merge(expected, on=["request_id", "item_id"])
        ranked = result.ranked.toPandas().merge(expected, on=["request_id", "item_id"])
        return outcome, ranked

    outcome, ranked = served(None)  # the depth is top_k
    assert (outcome["prerank_rank"] == outcome["place"]).all()
    beyond = outcome[outcome["place"] > TOP_K]
    assert expected["prerank"].nunique() > 1 and len(beyond) == 4  # lists of 5, 4 and 4 candidates
    np.testing.assert_allclose(beyond["score"], beyond["prerank"], atol=1e-9)
    assert set(zip(ranked["request_id"], ranked["item_id"], strict=True)) == set(
        zip(*expected[expected["place"] <= TOP_K][["request_id", "item_id"]].T.to_numpy(), strict=True)
    )
    np.testing.assert_allclose(ranked["score"], ranked["fused"], atol=1e-4)
    assert (ranked.groupby("request_id")["score"].diff().dropna() <= 0).all()

    _, features_only = served(0)
    assert (features_only["place"] == features_only["rank"]).all()
    np.testing.assert_allclose(features_only["score"], features_only["prerank"], atol=1e-9)
    with pytest.raises(ValueError, match=r"rerank.bert_depth=2 is below rerank.top_k=3"):
        RerankConfig(top_k=3, bert_depth=2)


def test_the_gate_promotes_only_a_version_that_beats_retrieval_and_the_champion():
    requests = pd.Index([f"u{n}" for n in range(60)])
    rng = np.random.default_rng(0)
    retrieval = pd.Series(rng.uniform(0.2, 0.4, 60), index=requests)
    better = retrieval + 0.2
    assert decide(better, retrieval, None).promoted
    same = decide(retrieval + rng.normal(scale=0.01, size=60), retrieval, None)
    assert not same.promoted and "retrieval order" in same.reason
    below_champion = decide(better, retrieval, better + 0.05)
    assert not below_champion.promoted and "champion" in below_champion.reason
    assert decide(better + 0.1, retrieval, better).promoted


def _served_versions(spark, config) -> tuple[list[str], set[str]]:
    """The rerank step's notes and the model versions its `ranked` rows name."""
    run = steps.rerank(spark, config)
    ranked = spark.read.format("delta").load(config.table_path("ranked")).toPandas()
    return run.notes, set(ranked["model_version"])


def test_rerank_serves_the_champion_alias_or_the_pinned_version_never_a_rejected_one(spark, config, tmp_path):
    """rerank.mode=champion resolves models:/NAME@champion through MLflow: with no registered model it
    serves the retrieval order exactly; a version registered as rejected after the champion neither gets
    the alias nor is served; mlflow.pinned_version serves the version it names."""
    assert served_config(config).rerank.mode == "retrieval"
    for table, frame in (("candidates", CANDIDATES), ("items", ITEMS), ("interactions", EVENTS)):
        write_table(frame_from_pandas(spark, frame, table), config, table, RUN_DATE)
    quiet = config.model_copy(
        update={
            "fairness": config.fairness.model_copy(update={"mode": "off"}),
            "rerank": config.rerank.model_copy(update={"top_k": TOP_K, "micro_batch_size": 4}),
        }
    )
    assert _served_versions(spark, quiet)[1] == {RETRIEVAL_VERSION}
    ranked = spark.read.format("delta").load(config.table_path("ranked")).toPandas()
    assert (ranked["rank"] == ranked["retrieval_rank"]).all()

    champion = build_tiny_artifact(tmp_path / "v1", version="v1")
    register_tiny_version(config, champion, CHAMPION, promote=True)
    register_tiny_version(config, build_tiny_artifact(tmp_path / "v2", version="v2", seed=1), REJECTED)
    newest = newest_version(config)
    assert newest is not None and (str(newest.version), newest.tags["gate_status"]) == ("2", REJECTED)
    aliases = registry_client(config).get_registered_model(config.mlflow.model_name).aliases
    assert {alias: str(version) for alias, version in aliases.items()} == {CHAMPION_ALIAS: "1"}
    notes, versions = _served_versions(spark, quiet)
    assert versions == {"v1"} and f"served model: v1 (models:/llmrank_reranker@{CHAMPION_ALIAS})" in notes

    def pinned(version: int):
        return quiet.model_copy(
            update={"mlflow": quiet.mlflow.model_copy(update={"pinned_version": version})}
        )

    notes, versions = _served_versions(spark, pinned(2))
    assert versions == {"v2"} and "served model: v2 (models:/llmrank_reranker/2, pinned)" in notes
    # A version whose gate found BERT adding nothing to its features is served as its prerank alone,
    # unless the config asks for a depth.
    register_tiny_version(
        config, build_tiny_artifact(tmp_path / "v3", version="v3"), CHAMPION, True, {SERVES_BERT_TAG: "false"}
    )
    assert served_config(quiet).rerank.bert_depth == 0 and served_config(pinned(1)).rerank.bert_depth is None
    notes, versions = _served_versions(spark, quiet)
    assert versions == {"v3"}
    assert "served model: v3 (models:/llmrank_reranker@champion, its features-only prerank: no BERT)" in notes
    depth_set = quiet.model_copy(update={"rerank": quiet.rerank.model_copy(update={"bert_depth": 10})})
    assert served_config(depth_set).rerank.bert_depth == 10
    with pytest.raises(ConfigError, match=r"mlflow.pinned_version 9: llmrank_reranker has no such version"):
        served_config(pinned(9))


def test_a_registry_holding_only_rejected_versions_has_no_champion_and_serves_the_retrieval_order(
    config, tmp_path
):
    """The first demo run registers its version as rejected: MLflow then knows the model but not the
    alias, and rerank must serve the retrieval order, not fail."""
    register_tiny_version(config, build_tiny_artifact(tmp_path / "v1", version="v1"), REJECTED)
    assert newest_version(config) is not None and champion_version(config) is None
    assert served_config(config).rerank.mode == "retrieval"


def test_train_logs_registers_and_gates_the_new_version_and_only_a_promoted_one_gets_the_alias(
    spark, tmp_path
):
    """The train step end to end, warm-started from a tiny registered champion: the new version is
    trained on the days before the gate, carries a LambdaMART fusion, is logged as an MLflow run (its
    parameters, the validation NDCG of each evaluated step, the gate's figures, the artifact), registered
    with its gate status, and gets the `champion` alias only if the gate promoted it; rerank serves the
    alias. It learns from the sample's judged queries too."""
    from llmrank_spark.config import load_config

    config = load_config(
        overrides=[
            f"lakehouse.root={tmp_path / 'lakehouse'}",
            "run.run_date=2026-10-16",
            "sample.n_items=300",
            "sample.n_users=60",
            "sample.n_events=3000",
            "candidates.n_per_request=20",
            "candidates.als_max_iter=2",
            "train.max_train_lists=16",
            "train.max_validation_lists=8",
            "train.max_query_lists=8",
            "train.max_fusion_lists=30",
            "train.fusion_random_negatives=3",
            "train.eval_every_steps=2",
            "train.gate_max_requests=40",
            "train.min_history=2",
            "rerank.micro_batch_size=16",
        ]
    )
    steps.generate_sample(spark, config)
    old = register_tiny_version(config, build_tiny_artifact(tmp_path / "v0", version="v0"), CHAMPION, True)

    run = steps.train(spark, config)
    new = newest_version(config)
    assert new is not None and str(new.version) == "2"
    status = new.tags["gate_status"]
    assert status in (CHAMPION, REJECTED) and new.tags["gate_reason"]
    assert any(line.startswith("gate on ") and status in line for line in run.notes)
    assert f"registered llmrank_reranker version 2 ({new.tags['artifact_version']}, {status})" in " ".join(
        run.notes
    )
    client = registry_client(config)
    logged = client.get_run(new.run_id).data
    assert {
        "gate_ndcg_at_10",
        "gate_retrieval_ndcg_at_10",
        "gate_change_low",
        "gate_champion_ndcg_at_10",
        "gate_features_ndcg_at_10",
    } <= set(logged.metrics)
    assert len(client.get_metric_history(new.run_id, "val_ndcg_at_10")) >= 2  # step 0 and later steps
    assert logged.params["loss"] == config.train.loss and logged.params["warm_from"] == "llmrank_reranker/1"
    manifest = read_manifest(artifact_dir(config, new))
    assert manifest.fusion is not None and manifest.fusion.inputs[-1] == BERT_SCORE
    assert manifest.prerank is not None and manifest.prerank.inputs == list(FEATURES)
    # BERT is served only if it beat the version's own features-only prerank beyond chance at the gate.
    assert new.tags[SERVES_BERT_TAG] == str(logged.metrics["gate_bert_change_low"] > 0).lower()
    # It also fine-tuned a query encoder, judged on held-out queries: shipped (and tagged) only if it
    # passed.
    assert manifest.metrics["query_encoder_gate_requests"] >= 1
    ships = manifest.metrics["query_encoder_gate_change_low"] > 0
    assert manifest.query_encoder == ships
    # Too few queries are held out here for a query fusion; BERT was measured on the held-out queries,
    # which decided whether it ranks them, unless the version ships an encoder: BERT was measured on
    # lists the encoder replaces, so it never ranks queries then.
    assert manifest.query_fusion is None
    promoted = not ships and manifest.metrics["query_gate_change_low"] > 0
    assert ("query_gate_requests" in manifest.metrics) == (not ships)
    assert manifest.request_types == (["user", "query"] if promoted else ["user"])
    assert (new.tags.get("query_encoder") == "true") == ships
    assert manifest.base_model.endswith("via v0")  # warm-started from the registered version
    champion = champion_version(config)
    assert champion is not None
    assert str(champion.version) == str(new.version if status == CHAMPION else old.version)
    assert served_config(config).rerank.model_path == artifact_dir(config, champion)


def test_fusion_lists_keep_the_served_list_and_the_open_list_of_each_user_apart():
    from llmrank_spark.config import TrainConfig
    from llmrank_spark.training import fusion_lists

    targets = pd.DataFrame(
        {"user_id": ["u1", "u1", "u2"], "item_id": ["a", "x", "b"], "label": [1.0, 0.5, 1.0]}
    )
    candidates = pd.DataFrame({"request_id": ["u1", "u1", "u2"], "item_id": ["a", "c", "c"]})
    seen = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["d", "e"]})
    catalogue = np.array(list("abcdefghxy"), dtype=object)
    cfg = TrainConfig(fusion_random_negatives=3)
    lists = fusion_lists(targets, candidates, seen, catalogue, cfg, np.random.default_rng(0))
    by_list = {
        name: group.set_index("item_id")["label"].to_dict() for name, group in lists.groupby("list_id")
    }
    # u1's served list is its candidates, labelled by its targets; u2's has no target in it, so none.
    assert by_list["u1"] == {"a": 1.0, "c": 0.0}
    assert "u2" not in by_list
    # The open lists: every target among random items the user never touched.
    assert {k: v for k, v in by_list["u1#open"].items() if v > 0} == {"a": 1.0, "x": 0.5}
    assert len(by_list["u1#open"]) == 5 and "d" not in by_list["u1#open"]
    assert len(by_list["u2#open"]) == 4 and "e" not in by_list["u2#open"]
    assert set(lists.loc[lists["list_id"].str.startswith("u1"), "user_id"]) == {"u1"}
