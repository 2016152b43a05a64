"""The Spark layer of each nightly step: read the contracted inputs, call the stage, write the output.

`jobs/*.py` (spark-submit) and the `llmrank` console command both call these functions, so a
notebook, a scheduled job and a developer's terminal run exactly the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import Config
from llmrank_spark.tables import contract, frame_from_pandas, read_table, table_exists, write_table


@dataclass
class StepResult:
    """What a step wrote: rows and Delta version per table, for the run summary."""

    step: str
    seconds: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [
            f"{t}: {self.rows[t]:,} rows (Delta v{self.versions[t]}) at {self.paths[t]}" for t in self.rows
        ]
        return f"[{self.step}] {self.seconds:.1f}s\n  " + "\n  ".join(parts)


def _record(result: StepResult, spark: SparkSession, config: Config, table: str) -> None:
    """Count what the step just wrote (this run's partition for run_date tables) and note the version."""
    path = config.table_path(table)
    written = spark.read.format("delta").load(path)
    if "run_date" in contract(table).partition_by:
        written = written.where(F.col("run_date") == F.lit(config.run.run_date))
    result.rows[table] = written.count()
    result.paths[table] = path
    history = DeltaTable.forPath(spark, path).history(1).select("version").first()
    result.versions[table] = int(history["version"])


def _write_frames(spark: SparkSession, config: Config, step: str, frames: dict, started: float) -> StepResult:
    result = StepResult(step)
    for table, frame in frames.items():
        write_table(frame_from_pandas(spark, frame, table), config, table)
        _record(result, spark, config, table)
    result.seconds = time.perf_counter() - started
    return result


def generate_sample(spark: SparkSession, config: Config) -> StepResult:
    """Write the seeded sample lakehouse (catalogue, behaviour, queries, ground truth) as Delta tables."""
    from llmrank_spark.sample_data import generate_sample as generate

    started = time.perf_counter()
    return _write_frames(spark, config, "generate-sample", generate(config.sample), started)


def ingest_movielens(spark: SparkSession, config: Config, path: str | Path) -> StepResult:
    """Turn MovieLens 100K files into the items, interactions and users input tables."""
    from llmrank_spark.movielens import load_movielens

    started = time.perf_counter()
    return _write_frames(spark, config, "ingest-movielens", load_movielens(path), started)


def _write_output(
    spark: SparkSession, config: Config, step: str, table: str, frame: DataFrame, started: float
) -> StepResult:
    write_table(frame, config, table, config.run.run_date)
    result = StepResult(step)
    _record(result, spark, config, table)
    result.seconds = time.perf_counter() - started
    return result


def _optional_input(spark: SparkSession, config: Config, table: str):
    return read_table(spark, config, table) if table_exists(spark, config, table) else None


def candidates(spark: SparkSession, config: Config) -> StepResult:
    """First stage: blended multi-source candidate lists for every active user."""
    from llmrank_spark.candidates import build_candidates

    started = time.perf_counter()
    frame = build_candidates(
        spark,
        read_table(spark, config, "items"),
        read_table(spark, config, "interactions"),
        _optional_input(spark, config, "users"),
        config.candidates,
        config.run.run_date,
    )
    return _write_output(spark, config, "candidates", "candidates", frame, started)


def rerank(spark: SparkSession, config: Config) -> StepResult:
    """Second stage: score every candidate with the broadcast BERT model and keep each list's top-K."""
    from llmrank_spark.ranking import rerank_candidates

    started = time.perf_counter()
    run_candidates = read_table(spark, config, "candidates").where(
        F.col("run_date") == F.lit(config.run.run_date)
    )
    frame = rerank_candidates(
        spark,
        run_candidates,
        read_table(spark, config, "items"),
        read_table(spark, config, "interactions"),
        config.rerank,
        config.run.run_date,
    )
    return _write_output(spark, config, "rerank", "ranked", frame, started)


NIGHTLY_STEPS: dict[str, Callable[[SparkSession, Config], StepResult]] = {
    "candidates": candidates,
    "rerank": rerank,
}


def nightly(spark: SparkSession, config: Config) -> list[StepResult]:
    """Every nightly step in order, for one run_date."""
    return [step(spark, config) for step in NIGHTLY_STEPS.values()]
