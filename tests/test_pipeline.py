"""End to end: the demo path on a small sample, run twice for the same date."""

from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import functions as F

from llmrank_spark.cli import main
from llmrank_spark.config import load_config

SMALL_SAMPLE = [
    "sample.n_items=300",
    "sample.n_users=60",
    "sample.n_events=3000",
    "sample.n_queries=20",
    "candidates.n_per_request=20",
    "candidates.quotas={covisit: 8, als: 8, semantic: 6, popularity: 4}",
    "rerank.top_k=10",
    "attributes.top_k_items=3",
    "run.run_date=2026-11-20",
]


def _partition_counts(spark, path: str) -> dict:
    table = spark.read.format("delta").load(path).where(F.col("run_date") == "2026-11-20")
    return {"rows": table.count(), "requests": table.select("request_id").distinct().count()}


def test_demo_writes_delta_tables_and_a_rerun_replaces_the_date(spark, tmp_path, capsys):
    overrides = [f"lakehouse.root={tmp_path / 'lakehouse'}", *SMALL_SAMPLE]
    args = [arg for pair in (("--set", o) for o in overrides) for arg in pair]
    assert main(["demo", *args]) == 0
    printed = capsys.readouterr().out
    assert "[candidates]" in printed and "[rerank]" in printed and "[attributes]" in printed

    config = load_config(overrides=overrides)
    candidates_path, ranked_path = config.table_path("candidates"), config.table_path("ranked")
    first = {p: _partition_counts(spark, p) for p in (candidates_path, ranked_path)}

    users = spark.read.format("delta").load(config.table_path("interactions")).select("user_id").distinct()
    assert first[candidates_path]["requests"] >= users.count()
    assert first[candidates_path]["rows"] == first[candidates_path]["requests"] * 20
    # Every request that has candidates is ranked, with its top-K.
    assert first[ranked_path]["requests"] == first[candidates_path]["requests"]
    assert first[ranked_path]["rows"] == first[ranked_path]["requests"] * 10

    assert main(["nightly", *args]) == 0
    second = {p: _partition_counts(spark, p) for p in (candidates_path, ranked_path)}
    assert second == first, "re-running a date must replace its partition, not append"

    for path in (candidates_path, ranked_path):
        assert sorted(Path(path, "_delta_log").glob("*.json")), f"no Delta commits under {path}"
        history = DeltaTable.forPath(spark, path).history().select("version", "operation").collect()
        assert [h.version for h in history] == [1, 0]
        assert {h.operation for h in history} == {"WRITE"}

    runs = spark.read.format("delta").load(config.table_path("runs"))
    last_rerank = runs.where("step = 'rerank'").orderBy(F.col("started_at").desc()).first()
    assert last_rerank.status == "succeeded"
    assert last_rerank.inputs["candidates"] == 1 and last_rerank.outputs == {"ranked": 1}
    assert set(last_rerank.inputs) == {"candidates", "items", "interactions", "queries"}
    assert last_rerank.rows["ranked"] == second[ranked_path]["rows"]
