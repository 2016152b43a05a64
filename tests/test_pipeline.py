"""End to end on a small sample: the demo, then every notebook as a script re-running the same date."""

import runpy
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

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
    "train.eval_every_steps=2",
    f"run.run_date={RUN_DATE}",
]


def _partition_counts(spark, path: str) -> dict:
    table = spark.read.format("delta").load(path).where(F.col("run_date") == RUN_DATE)
    return {"rows": table.count(), "requests": table.select("request_id").distinct().count()}


def latest_version(spark, path: str) -> int:
    return DeltaTable.forPath(spark, path).history(1).first().version


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    return [f"lakehouse.root={tmp_path_factory.mktemp('pipeline') / 'lakehouse'}", *SMALL_SAMPLE]


@pytest.fixture(scope="module")
def first_run(spark, overrides) -> dict:
    """Run the demo once; the counts of its candidates and ranked partitions."""
    args = [arg for pair in (("--set", o) for o in overrides) for arg in pair]
    assert main(["demo", *args]) == 0
    config = load_config(overrides=overrides)
    return {
        table: _partition_counts(spark, config.table_path(table))
        for table in ("candidates", "ranked", "attribute_order")
    }


def test_demo_writes_a_list_for_every_user_and_ranks_every_list(spark, overrides, first_run):
    config = load_config(overrides=overrides)
    users = spark.read.format("delta").load(config.table_path("interactions")).select("user_id").distinct()
    assert first_run["candidates"]["requests"] >= users.count()
    assert first_run["candidates"]["rows"] == first_run["candidates"]["requests"] * 20
    assert first_run["ranked"]["requests"] == first_run["candidates"]["requests"]
    assert first_run["ranked"]["rows"] == first_run["ranked"]["requests"] * 10
    # Every sample item has attributes, so every ranked list gets attribute orders.
    assert first_run["attribute_order"]["requests"] == first_run["ranked"]["requests"]


def test_notebooks_run_as_scripts_and_a_rerun_replaces_the_date(
    spark, overrides, first_run, monkeypatch, capsys
):
    """Every notebook runs locally with its widget defaults; re-running the steps replaces the partition."""
    assert [p.name for p in NOTEBOOKS][:3] == ["00_generate_sample.py", "01_candidates.py", "02_rerank.py"]
    monkeypatch.setenv("LLMRANK_OVERRIDES", ";".join(overrides))
    for notebook in NOTEBOOKS:
        runpy.run_path(str(notebook), run_name="__main__")
    printed = capsys.readouterr().out
    assert all(f"[{step}]" in printed for step in ("candidates", "rerank", "attributes", "evaluate", "train"))
    assert "request " in printed, "the explore notebook names the request it shows"

    config = load_config(overrides=overrides)
    for table in ("candidates", "ranked", "attribute_order"):
        path = config.table_path(table)
        assert _partition_counts(spark, path) == first_run[table], f"{table}: a rerun must not append"
        history = DeltaTable.forPath(spark, path).history().select("version", "operation").collect()
        assert [h.version for h in history] == [1, 0]
        assert {h.operation for h in history} == {"WRITE"}


def test_runs_table_traces_every_step_to_the_versions_it_read_and_wrote(spark, overrides, first_run, capsys):
    config = load_config(overrides=overrides)
    runs = spark.read.format("delta").load(config.table_path("runs"))
    assert runs.where("status != 'succeeded'").count() == 0
    last_rerank = runs.where("step = 'rerank'").orderBy(F.col("started_at").desc()).first()
    assert set(last_rerank.inputs) == {"candidates", "items", "interactions", "queries"}
    assert set(last_rerank.outputs) == {"ranked", "rejects"}
    assert last_rerank.outputs["ranked"] == latest_version(spark, config.table_path("ranked"))
    last_candidates = runs.where("step = 'candidates'").orderBy(F.col("started_at").desc()).first()
    # The rerank read exactly the candidates version the candidates step had just written.
    assert last_rerank.inputs["candidates"] == last_candidates.outputs["candidates"]
    assert last_rerank.rows["ranked"] == first_run["ranked"]["rows"]

    # `llmrank runs` prints the same lineage, one line per step run, oldest first.
    assert main(["runs", *[arg for o in overrides for arg in ("--set", o)]]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in lines[:5]] == ["generate-sample", *NIGHTLY_STEPS]
    last_rerank_line = [line for line in lines if line.startswith("rerank ")][-1]
    assert f"candidates@v{last_rerank.inputs['candidates']}" in last_rerank_line
    wrote_ranked = f"ranked@v{last_rerank.outputs['ranked']} ({last_rerank.rows['ranked']:,} rows)"
    assert wrote_ranked in last_rerank_line
