"""Faults injected into the real candidates -> rerank path: every request is accounted for, tables stay whole.

One small lakehouse is seeded with every bad input case of docs/reliability.md; the real steps run on it
once (module fixture) with the tiny reranker, whose embedding of one word is poisoned to NaN so the model
itself scores the pairs of one item NaN. The later tests re-run the rerank step on the same lakehouse.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from delta.exceptions import ConcurrentAppendException
from pyspark.sql import functions as F
from tiny_reranker import tiny_artifact

from llmrank_spark.config import load_config
from llmrank_spark.lakehouse import (
    REASONS,
    REQUEST_KEY,
    ContractError,
    frame_from_pandas,
    latest_version,
    load,
    table_exists,
    write_table,
)
from llmrank_spark.pipeline import steps
from llmrank_spark.rerank import load_artifact, save_artifact

RUN_DATE = dt.date(2026, 11, 20)
POISON = "zeppelin"  # one wordpiece of the MiniLM vocabulary; its embedding is set to NaN
INVALID_UTF8_TITLE = "43616E766173FF546F7465"  # hex of b"Canvas\xffTote": \xff is never valid UTF-8
TITLES = {
    "i0": "Trail Runner",
    "i1": "Wool Beanie",
    "i2": "Leather Belt",
    "i3": "Rain Jacket",
    "i4": "Desk Lamp",
    "i5": "Coffee Mug",
    "i_ctrl": "Reading\x00Light\x1b[0m with\r\nclip",  # control characters: repaired
    "i_utf8": "placeholder, replaced by invalid UTF-8 bytes",  # repaired to U+FFFD on read
    "i_long": "Garden Hose " * 300,  # far over the token budget: truncated
    "i_blank": None,  # no title: rejected
    "i_nan": f"{POISON.title()} Model Kit",  # scored NaN by the poisoned model: rejected
}
CATEGORIES = ["Shoes", "Hats", "Accessories", "Outerwear", "Home", "Kitchen"]
# The candidates step lists q_ok and rejects the other two; q_blank also gets an upstream list (below).
QUERIES = {"q_ok": "warm winter hat", "q_blank": " \x07\t ", "q_long": "hat " * 200}


def _items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": list(TITLES),
            "title": list(TITLES.values()),
            "category": [CATEGORIES[n % len(CATEGORIES)] for n in range(len(TITLES))],
            "brand": ["Acme", "Zed"] * (len(TITLES) // 2) + ["Bolt"],
        }
    )


def _events() -> pd.DataFrame:
    day = dt.datetime(2026, 11, 1)
    rows = [
        ("u1", "i0", "view"),
        ("u1", "i1", "click"),
        ("u1", "i2", "purchase"),
        ("u1", "ghost", "view"),  # item missing from the catalogue
        ("u2", "i3", "view"),
        ("u2", "i4", "add_to_cart"),
        ("u2", "i5", "wishlist"),  # unknown event type
    ]
    rows += [("u_all", item, "purchase") for item in TITLES]  # bought everything: no candidates left
    return pd.DataFrame(
        [
            {"user_id": u, "item_id": i, "event_type": e, "event_ts": day + dt.timedelta(hours=n)}
            for n, (u, i, e) in enumerate(rows)
        ]
    )


def _candidate(request_id: str, item_id: str, rank: int, request_type: str = "user") -> dict:
    return {
        "run_date": RUN_DATE,
        "request_id": request_id,
        "request_type": request_type,
        "item_id": item_id,
        "retrieval_rank": rank,
        "retrieval_score": 1.0 / rank,
        "sources": ["popularity"],
        "source_ranks": {"popularity": rank},
        "source_scores": {"popularity": 1.0},
    }


# Rows an upstream writer of `candidates` could leave that the candidates step itself never produces.
INJECTED_CANDIDATES = [
    _candidate("u1", "i0", 99),  # duplicate of a row the candidates step wrote
    _candidate("u2", "delisted", 7),  # item missing from the catalogue
    _candidate("u_gone", "delisted", 1),  # a request whose only candidate is missing
    _candidate("q_blank", "i1", 1, "query"),  # empty query text
    _candidate("q_missing", "i1", 1, "query"),  # no queries row
    _candidate("s1", "i1", 1, "session"),  # unknown request type
]
EXPECTED_RERANK_REJECTS = {
    ("u1", "i0"): "duplicate_candidate",
    ("u2", "delisted"): "item_not_in_catalogue",
    ("u_gone", "delisted"): "item_not_in_catalogue",
    ("q_blank", "i1"): "empty_query_text",
    ("q_missing", "i1"): "query_not_found",
    ("s1", "i1"): "unknown_request_type",
}


def poisoned_artifact(path: Path) -> Path:
    """The tiny reranker with the embedding of POISON set to NaN: the model scores its pairs NaN."""
    artifact = load_artifact(tiny_artifact())
    token = artifact.tokenizer.convert_tokens_to_ids(POISON)
    assert artifact.tokenizer.tokenize(POISON) == [POISON]
    with torch.no_grad():
        artifact.model.bert.embeddings.word_embeddings.weight[token] = float("nan")
    manifest = artifact.manifest.model_copy(update={"version": "tiny-poisoned"})
    return save_artifact(artifact.model, artifact.tokenizer, path, manifest)


def _partition(spark, config, table: str, step: str | None = None) -> pd.DataFrame:
    frame = load(spark, config.table_path(table)).where(F.col("run_date") == F.lit(RUN_DATE))
    if step is not None:
        frame = frame.where(F.col("step") == step)
    keys = [
        c for c in ("step", "request_type", "request_id", "item_id", "reason", "rank") if c in frame.columns
    ]
    return frame.toPandas().sort_values(keys).reset_index(drop=True)


def _versions(spark, config) -> dict[str, int]:
    return {table: latest_version(spark, config, table) for table in ("candidates", "ranked", "rejects")}


@pytest.fixture(scope="module")
def lakehouse(spark, tmp_path_factory):
    """The seeded lakehouse after the real candidates step, the injected rows and the rerank step."""
    root = tmp_path_factory.mktemp("reliability")
    config = load_config(
        overrides=[
            f"lakehouse.root={root / 'lakehouse'}",
            f"run.run_date={RUN_DATE}",
            "candidates.n_per_request=20",
            "candidates.als_rank=4",
            "candidates.als_max_iter=3",
            "rerank.mode=cross_encoder",
            f"rerank.model_path={poisoned_artifact(root / 'poisoned')}",
            "rerank.top_k=50",  # above every list's length: every scored pair is in `ranked`
            "rerank.micro_batch_size=8",
        ]
    )
    items = frame_from_pandas(spark, _items(), "items").withColumn(
        "title",
        F.when(F.col("item_id") == "i_utf8", F.unhex(F.lit(INVALID_UTF8_TITLE)).cast("string")).otherwise(
            F.col("title")
        ),
    )
    write_table(items, config, "items")
    write_table(frame_from_pandas(spark, _events(), "interactions"), config, "interactions")
    users = pd.DataFrame({"user_id": ["u1", "u2", "u_all", "u_cold"]})
    write_table(frame_from_pandas(spark, users, "users"), config, "users")
    queries = pd.DataFrame({"query_id": list(QUERIES), "query_text": list(QUERIES.values())})
    write_table(frame_from_pandas(spark, queries, "queries"), config, "queries")

    steps.candidates(spark, config)
    written = load(spark, config.table_path("candidates"))
    extra = frame_from_pandas(spark, pd.DataFrame(INJECTED_CANDIDATES), "candidates")
    write_table(written.unionByName(extra).localCheckpoint(), config, "candidates", RUN_DATE)
    steps.rerank(spark, config)
    return config


def test_invalid_utf8_really_reaches_the_items_table(spark, lakehouse):
    raw = load(spark, lakehouse.table_path("items")).where("item_id = 'i_utf8'")
    assert raw.select(F.is_valid_utf8("title")).first()[0] is False


def test_candidates_step_accounts_for_every_active_user_and_rejects_unusable_events(spark, lakehouse):
    step = load(spark, lakehouse.table_path("runs")).where("step = 'candidates'").first()
    written = load(spark, lakehouse.table_path("candidates"), step.outputs["candidates"])
    rejects = _partition(spark, lakehouse, "rejects", "candidates")
    requests_rejected = rejects[rejects.item_id.isna()]
    listed = {(r.request_type, r.request_id) for r in written.select(*REQUEST_KEY).distinct().collect()}
    assert listed == {("user", "u1"), ("user", "u2"), ("user", "u_cold"), ("query", "q_ok")}
    assert requests_rejected[["request_id", "reason", "input_table"]].values.tolist() == [
        ["q_blank", "empty_query_text", "queries"],
        ["q_long", "query_too_long", "queries"],
        ["u_all", "no_candidates", "interactions"],
    ]
    by_pair = {(r.request_id, r.item_id): (r.reason, r.detail) for r in rejects.itertuples() if r.item_id}
    assert by_pair == {
        ("u1", "ghost"): ("item_not_in_catalogue", "1 events ignored"),
        ("u2", "i5"): (
            "unknown_event_type",
            "event_type 'wishlist' not in candidates.event_weights; 1 events ignored",
        ),
    }


def test_every_candidate_row_ends_in_ranked_or_rejects_with_its_reason(spark, lakehouse):
    candidates = _partition(spark, lakehouse, "candidates")
    ranked = _partition(spark, lakehouse, "ranked")
    rejects = _partition(spark, lakehouse, "rejects", "rerank")

    def pairs(frame: pd.DataFrame) -> Counter:
        return Counter(frame[["request_type", "request_id", "item_id"]].itertuples(index=False, name=None))

    assert pairs(candidates) == pairs(ranked) + pairs(rejects), "each candidate row once, ranked or rejected"
    requests = {(r.request_type, r.request_id) for r in candidates.itertuples()}
    ranked_requests = {(r.request_type, r.request_id) for r in ranked.itertuples()}
    rejected_requests = {(r.request_type, r.request_id) for r in rejects.itertuples()}
    assert requests == ranked_requests | rejected_requests
    assert {"u_gone", "q_blank", "q_missing", "s1"}.isdisjoint(r for _, r in ranked_requests)

    reasons = {(r.request_id, r.item_id): r.reason for r in rejects.itertuples()}
    for pair, reason in EXPECTED_RERANK_REJECTS.items():
        assert reasons.pop(pair) == reason, pair
    # Left: every list's title-less item and the item the model scores NaN.
    assert {pair[1]: reason for pair, reason in reasons.items()} == {
        "i_blank": "empty_item_text",
        "i_nan": "non_finite_score",
    }
    assert {r.request_id for r in rejects.itertuples() if r.item_id == "i_nan"} == {
        "u1",
        "u2",
        "u_cold",
        "q_ok",
    }
    assert rejects.reason.isin(list(REASONS)).all() and (rejects.input_table == "candidates").all()
    assert rejects[rejects.reason == "non_finite_score"].detail.eq("score NaN").all()
    [kept] = ranked[(ranked.request_id == "u1") & (ranked.item_id == "i0")].retrieval_rank
    assert rejects[rejects.reason == "duplicate_candidate"].detail.tolist() == [
        f"kept the copy at retrieval_rank {kept}"
    ]
    assert kept < 99, "the injected copy at rank 99 is the one rejected"


def test_repaired_inputs_are_ranked_and_scores_are_finite(spark, lakehouse):
    ranked = _partition(spark, lakehouse, "ranked")
    # u_cold has no history: ranked with NEW_SHOPPER_CONTEXT; q_ok shares no word with any title, so its
    # list is the semantic retriever's whole (small) catalogue.
    for request in ("u1", "u2", "u_cold", "q_ok"):
        items = set(ranked[ranked.request_id == request].item_id)
        assert {"i_ctrl", "i_utf8", "i_long"} <= items, request
    assert np.isfinite(ranked.score).all()
    assert not ranked.duplicated(["request_id", "item_id"]).any()


def test_rerunning_a_date_gives_the_same_rows_and_no_duplicates(spark, lakehouse):
    before = {t: _partition(spark, lakehouse, t) for t in ("ranked", "rejects")}
    versions = _versions(spark, lakehouse)
    steps.rerank(spark, lakehouse)
    after = {t: _partition(spark, lakehouse, t) for t in ("ranked", "rejects")}
    for table in before:
        pd.testing.assert_frame_equal(after[table], before[table], check_exact=True)
    assert _versions(spark, lakehouse) == {
        **versions,
        "ranked": versions["ranked"] + 1,
        "rejects": versions["rejects"] + 1,
    }


def test_a_failure_mid_scoring_leaves_every_output_at_its_previous_version(spark, lakehouse):
    before = {t: _partition(spark, lakehouse, t) for t in ("candidates", "ranked", "rejects")}
    versions = _versions(spark, lakehouse)
    faulty = lakehouse.model_copy(deep=True)
    faulty.faults.fail_scoring_after_batches = 1
    batch_size = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "4")  # several batches per task
    try:
        with pytest.raises(Exception, match="injected failure after 1 scored batches"):
            steps.rerank(spark, faulty)
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", batch_size)
    assert _versions(spark, lakehouse) == versions, "no output table got a new version"
    for table, frame in before.items():
        pd.testing.assert_frame_equal(_partition(spark, lakehouse, table), frame, check_exact=True)
    runs = load(spark, lakehouse.table_path("runs")).where("step = 'rerank'").orderBy(F.desc("started_at"))
    last = runs.first()
    assert last.status == "failed" and "injected failure" in last.error and last.outputs == {}


@pytest.mark.parametrize(
    ("table", "drift", "message"),
    [
        ("items", lambda df: df.drop("title"), r"table 'items'.*missing required column 'title'"),
        (
            "candidates",
            lambda df: df.withColumn("retrieval_rank", F.col("retrieval_rank").cast("string")),
            r"table 'candidates'.*column 'retrieval_rank' has type string, contract says int",
        ),
    ],
)
def test_schema_drift_in_an_input_fails_the_step_before_anything_is_written(
    spark, lakehouse, tmp_path, table, drift, message
):
    drifted = str(tmp_path / f"drifted_{table}")
    drift(load(spark, lakehouse.table_path(table))).write.format("delta").save(drifted)
    config = lakehouse.model_copy(deep=True)
    config.lakehouse.external_tables = [table]
    config.lakehouse.tables = {table: drifted}
    versions = _versions(spark, lakehouse)
    with pytest.raises(ContractError, match=message):
        steps.rerank(spark, config)
    assert _versions(spark, lakehouse) == versions


def _wait_for(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {seconds}s")
        time.sleep(0.1)


def test_concurrent_writers_of_one_partition_one_commits_the_other_gets_delta_conflict(
    spark, config, tmp_path
):
    """Writer A's job is held (a UDF waits on a file) after its transaction read the table; writer B
    commits meanwhile; A's commit must then fail with Delta's conflict error, and the table hold B's rows."""
    ranked = pd.DataFrame(
        {
            "run_date": RUN_DATE,
            "request_id": "u1",
            "request_type": "user",
            "item_id": ["i0", "i1"],
            "rank": [1, 2],
            "score": [0.9, 0.1],
            "model_version": "v",
            "retrieval_rank": [1, 2],
            "retrieval_score": [1.0, 0.5],
            "sources": [["als"], ["als"]],
        }
    )
    write_table(frame_from_pandas(spark, ranked, "ranked"), config, "ranked", RUN_DATE)
    started, release = tmp_path / "a-started", tmp_path / "a-release"

    started_at, release_at = str(started), str(release)  # plain strings: the UDF must not need this module

    @F.udf("double")
    def held(score: float) -> float:
        import os
        import time

        open(started_at, "w").close()
        for _ in range(1200):
            if os.path.exists(release_at):
                break
            time.sleep(0.1)
        return score

    writer_a = frame_from_pandas(spark, ranked.assign(model_version="A"), "ranked").coalesce(1)
    writer_a = writer_a.withColumn("score", held("score"))
    outcome: dict[str, BaseException] = {}

    def write_a() -> None:
        try:
            write_table(writer_a, config, "ranked", RUN_DATE)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=write_a)
    thread.start()
    try:
        _wait_for(started, 120)
        write_table(
            frame_from_pandas(spark, ranked.assign(model_version="B"), "ranked"), config, "ranked", RUN_DATE
        )
    finally:
        release.touch()
        thread.join(180)
    # Delta's conflict for a write whose partition another commit added files to since it was read. (In
    # delta-spark 4.4 the Python conflict classes do not subclass DeltaConcurrentModificationException.)
    assert isinstance(outcome.get("error"), ConcurrentAppendException), outcome
    table = load(spark, config.table_path("ranked")).toPandas()
    assert sorted(table.model_version) == ["B", "B"], "B's commit stands alone; A left nothing behind"
    assert latest_version(spark, config, "ranked") == 1


def test_step_names_are_checked_before_they_reach_a_replace_predicate(spark, config):
    rejects = pd.DataFrame(
        {
            "run_date": [RUN_DATE],
            "step": ["x' OR '1'='1"],
            "input_table": ["candidates"],
            "request_id": ["u1"],
            "reason": ["r"],
        }
    )
    with pytest.raises(ValueError, match="partitioned by step"):
        write_table(frame_from_pandas(spark, rejects, "rejects"), config, "rejects", RUN_DATE, "x' OR '1'='1")
    assert not Path(config.table_path("rejects")).exists()
    # A valid step name whose rows belong to another step fails the write as it runs, committing nothing.
    rejects["step"] = "candidates"
    with pytest.raises(ContractError, match="rows with step other than rerank"):
        write_table(frame_from_pandas(spark, rejects, "rejects"), config, "rejects", RUN_DATE, "rerank")
    assert not table_exists(spark, config, "rejects")
