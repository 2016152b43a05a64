"""End to end on a small sample: every notebook as a script (the sample, each nightly step, training and
exploring), beside the `demo` command run by the CLI in its own process through Spark Connect; the two
must write the same tables. Re-running a date is tested per step (test_reliability.py, test_tables.py).
"""

import contextlib
import importlib.util
import io
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F
from tiny_reranker import TINY_VERSION, tiny_artifact

from llmrank_spark.config import load_config
from llmrank_spark.pipeline import NIGHTLY_STEPS, main

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.py"))
RUN_DATE = "2026-11-20"
SMALL_SAMPLE = [
    "sample.n_items=300",
    "sample.n_users=60",
    "sample.n_events=3000",
    "sample.n_queries=20",
    "candidates.n_per_request=20",
    "candidates.quotas={covisit: 8, als: 8, semantic: 6, popularity: 4}",
    "rerank.top_k=10",
    "attributes.top_k_items=3",
    "evaluate.embedding_diversity=false",
    "train.max_train_lists=16",
    "train.max_validation_lists=8",
    "train.max_query_lists=8",
    # The query encoder's fine-tuning and serving are tested in test_query_encoder.py and the train step
    # end to end in test_fusion.py; here it would only add minutes.
    "train.query_encoder_epochs=0",
    # The query fusion's fitting is tested in test_query_fusion.py, and the fusion's lists are capped as in
    # test_fusion.py: the train notebook only has to run.
    "train.query_fusion_trees=0",
    "train.max_fusion_lists=30",
    "train.fusion_random_negatives=3",
    # The attribute model is tested in test_attribute_behaviour.py; here it would be fine-tuned in every
    # attributes run.
    "attributes.model_epochs=0",
    "train.eval_every_steps=2",
    # The gate's back-dated run is tested with the train step end to end in test_fusion.py; here the
    # train notebook only has to run.
    "train.gate_days=0",
    f"run.run_date={RUN_DATE}",
]


def _partition_counts(spark, path: str) -> dict:
    table = spark.read.format("delta").load(path).where(F.col("run_date") == RUN_DATE)
    return {"rows": table.count(), "requests": table.select("request_id").distinct().count()}


def latest_version(spark, path: str) -> int:
    return DeltaTable.forPath(spark, path).history(1).first().version


def _lakehouse_overrides(root: Path) -> list[str]:
    """The small sample in a lakehouse at `root`, re-ranked by the tiny fine-tuned artifact, so the scoring
    UDF and the shipping of a model to the executors are part of every run."""
    served = ["rerank.mode=cross_encoder", f"rerank.model_path={tiny_artifact()}"]
    return [f"lakehouse.root={root}", *SMALL_SAMPLE, *served]


def _args(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    return _lakehouse_overrides(tmp_path_factory.mktemp("pipeline") / "lakehouse")


@pytest.fixture(scope="module")
def first_run(spark, overrides, connect_started) -> dict:
    """Run every notebook once, in order, with its widget defaults and the small sample's overrides: the
    counts of the candidates, ranked and attribute_order partitions, and what the notebooks printed."""
    assert [p.name for p in NOTEBOOKS] == [
        "00_generate_sample.py",
        *[f"0{n}_{step}.py" for n, step in enumerate(NIGHTLY_STEPS, start=1)],
        "05_train.py",
        "10_explore.py",
    ]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setenv("LLMRANK_OVERRIDES", ";".join(overrides))
        for notebook in NOTEBOOKS:
            runpy.run_path(str(notebook), run_name="__main__")
    config = load_config(overrides=overrides)
    counts = {
        table: _partition_counts(spark, config.table_path(table))
        for table in ("candidates", "ranked", "attribute_order")
    }
    return {**counts, "printed": printed.getvalue()}


def test_the_notebooks_write_a_list_for_every_user_and_rank_every_list(spark, overrides, first_run):
    config = load_config(overrides=overrides)
    users = spark.read.format("delta").load(config.table_path("interactions")).select("user_id").distinct()
    assert first_run["candidates"]["requests"] >= users.count()
    assert first_run["candidates"]["rows"] == first_run["candidates"]["requests"] * 20
    assert first_run["ranked"]["requests"] == first_run["candidates"]["requests"]
    assert first_run["ranked"]["rows"] == first_run["ranked"]["requests"] * 10
    # Every sample item has attributes, so every ranked list gets attribute orders.
    assert first_run["attribute_order"]["requests"] == first_run["ranked"]["requests"]


def test_every_notebook_prints_its_step_and_the_explore_notebook_names_its_request(first_run):
    printed = first_run["printed"]
    assert all(f"[{step}]" in printed for step in ("candidates", "rerank", "attributes", "evaluate", "train"))
    assert "request " in printed, "the explore notebook names the request it shows"


def test_runs_table_traces_every_step_to_the_versions_it_read_and_wrote(spark, overrides, first_run, capsys):
    config = load_config(overrides=overrides)
    runs = spark.read.format("delta").load(config.table_path("runs"))
    assert runs.where("status != 'succeeded'").count() == 0
    last_rerank = runs.where("step = 'rerank'").first()
    assert set(last_rerank.inputs) == {"candidates", "items", "interactions", "queries", "item_embeddings"}
    assert set(last_rerank.outputs) == {"ranked", "rejects"}
    assert last_rerank.outputs["ranked"] == latest_version(spark, config.table_path("ranked"))
    last_candidates = runs.where("step = 'candidates'").first()
    # The rerank read exactly the candidates version the candidates step had just written, and the item
    # vectors it had kept.
    assert last_rerank.inputs["candidates"] == last_candidates.outputs["candidates"]
    assert last_rerank.inputs["item_embeddings"] == last_candidates.outputs["item_embeddings"]
    assert last_rerank.rows["ranked"] == first_run["ranked"]["rows"]

    # `llmrank runs` prints the same lineage, one line per step run, oldest first.
    assert main(["runs", *[arg for o in overrides for arg in ("--set", o)]]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["generate-sample", *NIGHTLY_STEPS, "train"]
    rerank_line = lines[2]
    assert f"candidates@v{last_rerank.inputs['candidates']}" in rerank_line
    wrote_ranked = f"ranked@v{last_rerank.outputs['ranked']} ({last_rerank.rows['ranked']:,} rows)"
    assert wrote_ranked in rerank_line


# Columns that say when a run happened, not what it computed.
RUN_TIME_COLUMNS = {"created_at", "started_at", "ended_at", "computed_at"}


def _date_of(spark, config, table: str) -> pd.DataFrame:
    frame = spark.read.format("delta").load(config.table_path(table)).where(F.col("run_date") == RUN_DATE)
    local = frame.drop(*[c for c in frame.columns if c in RUN_TIME_COLUMNS]).toPandas()
    keys = [c for c in local.columns if local[c].map(lambda v: isinstance(v, str | int | float)).all()]
    return local.sort_values(keys, kind="mergesort").reset_index(drop=True)


@pytest.fixture(scope="module")
def connect_started(tmp_path_factory):
    """The demo started by the CLI in its own process over a local Spark Connect server with Delta; the
    classic demo runs meanwhile, so the two share the machine's idle time (JVM starts, driver work).

    Databricks serverless and standard access mode reach Spark only this way: no SparkContext, no RDDs, no
    broadcast variables, no JVM gateway. Its own process, because PySpark switches its functions to Spark
    Connect process-wide once a Connect session exists.
    """
    if importlib.util.find_spec("grpc") is None:  # connect_run skips, saying why
        yield None
        return
    overrides = _lakehouse_overrides(tmp_path_factory.mktemp("connect") / "lakehouse")
    logs = tmp_path_factory.mktemp("connect-logs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_GATEWAY", "SPARK_CONNECT"))}
    command = [sys.executable, "-m", "llmrank_spark.pipeline.cli", "demo", *_args(overrides)]
    with open(logs / "console.txt", "w") as console:
        process = subprocess.Popen(
            [*command, "--set", "spark.remote=local[2]"],
            env=env | {"LLMRANK_LOG_DIR": str(logs)},
            stdout=console,
            stderr=subprocess.STDOUT,
        )
        yield process, overrides, logs
        process.kill()


@pytest.fixture(scope="module")
def connect_run(connect_started) -> list[str]:
    """The Spark Connect demo's overrides, once it has finished."""
    if connect_started is None:
        pytest.skip("the Spark Connect client needs pyspark[connect] (make setup installs it)")
    process, overrides, logs = connect_started
    process.wait(timeout=1500)
    output = "".join(path.read_text()[-4000:] for path in sorted(logs.glob("*.*")))
    assert process.returncode == 0, f"the Spark Connect run failed:\n{output}"
    return overrides


def test_a_spark_connect_run_writes_what_a_classic_run_writes(spark, overrides, first_run, connect_run):
    """Same inputs, same tables: the candidates, the ranked lists, the attribute orders and the metrics.
    Scores agree to float32 precision (batches differ between the runs, so BERT's sums do too)."""
    classic, connect = load_config(overrides=overrides), load_config(overrides=connect_run)
    for table in ("candidates", "ranked", "attribute_order", "metrics"):
        expected, got = _date_of(spark, classic, table), _date_of(spark, connect, table)
        assert len(got) > 0, f"{table}: the Spark Connect run wrote no rows for {RUN_DATE}"
        pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-5, atol=1e-4, obj=table)


def test_a_spark_connect_run_serves_the_shipped_model_and_logs_every_step(spark, connect_run):
    config = load_config(overrides=connect_run)
    ranked = spark.read.format("delta").load(config.table_path("ranked"))
    assert {row.model_version for row in ranked.select("model_version").distinct().collect()} == {
        TINY_VERSION
    }
    runs = spark.read.format("delta").load(config.table_path("runs"))
    assert runs.where("status != 'succeeded'").count() == 0
    assert {row.step for row in runs.select("step").collect()} == {"generate-sample", *NIGHTLY_STEPS}
