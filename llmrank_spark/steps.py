"""The Spark layer of each nightly step: read the contracted inputs, call the stage, write the output.

`jobs/*.py` (spark-submit) and the `llmrank` console command both call these functions, so a
notebook, a scheduled job and a developer's terminal run exactly the same code. Every step runs
inside a `StepRun`, which pins the Delta version of each input it reads and logs what it read and
wrote to the `runs` table, so any output row can be traced to its inputs and model.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import Config
from llmrank_spark.tables import (
    contract,
    frame_from_pandas,
    latest_version,
    load,
    read_table,
    table_exists,
    write_table,
)


@contextmanager
def materialised(frame: DataFrame) -> Iterator[DataFrame]:
    """`frame` computed once, in full, before the block writes anything derived from it.

    A step whose outputs share expensive work (the model's scores) then does that work once, and a
    failure in it (a crashed scorer, an injected fault) happens before the first commit: every output
    table keeps its previous version. Cached blocks lost with an executor are recomputed by Spark.
    """
    frame.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        frame.count()
        yield frame
    finally:
        frame.unpersist()


class StepRun:
    """One step's run: pinned reads, checked writes, and a row in `runs` whether it succeeds or fails."""

    def __init__(self, spark: SparkSession, config: Config, step: str) -> None:
        self.spark, self.config, self.step = spark, config, step
        self.inputs: dict[str, int] = {}
        self.outputs: dict[str, int] = {}
        self.rows: dict[str, int] = {}
        self.seconds = 0.0
        self.notes: list[str] = []  # lines a person should read after the step (e.g. the run report)

    def __enter__(self) -> StepRun:
        self._started_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        self._clock = time.perf_counter()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.seconds = time.perf_counter() - self._clock
        self._log(status="failed" if error else "succeeded", error=str(error) if error else None)

    def read(self, table: str) -> DataFrame:
        """The table at its current version, pinned, so what was read is exactly what is logged."""
        version = latest_version(self.spark, self.config, table) if self._exists(table) else None
        frame = read_table(self.spark, self.config, table, version=version)
        self.inputs[table] = version
        return frame

    def read_optional(self, table: str) -> DataFrame | None:
        return self.read(table) if self._exists(table) else None

    def write(self, table: str, frame: DataFrame) -> None:
        write_table(frame, self.config, table, self.config.run.run_date, self.step)
        location = self.config.table_path(table)
        written = load(self.spark, location)
        partition_by = contract(table).partition_by
        if "run_date" in partition_by:
            written = written.where(F.col("run_date") == F.lit(self.config.run.run_date))
        if "step" in partition_by:
            written = written.where(F.col("step") == F.lit(self.step))
        self.rows[table] = written.count()
        self.outputs[table] = latest_version(self.spark, self.config, table)

    def summary(self) -> str:
        lines = [
            f"{t}: {self.rows[t]:,} rows (Delta v{self.outputs[t]}) at {self.config.table_path(t)}"
            for t in self.outputs
        ]
        return f"[{self.step}] {self.seconds:.1f}s\n  " + "\n  ".join(lines + self.notes)

    def _exists(self, table: str) -> bool:
        return table_exists(self.spark, self.config, table)

    def _log(self, status: str, error: str | None) -> None:
        record = pd.DataFrame(
            [
                {
                    "run_id": uuid.uuid4().hex,
                    "run_date": self.config.run.run_date,
                    "step": self.step,
                    "status": status,
                    "started_at": self._started_at,
                    "seconds": self.seconds,
                    "inputs": self.inputs,
                    "outputs": self.outputs,
                    "rows": self.rows,
                    "config": self.config.model_dump_json(),
                    "error": error,
                }
            ]
        )
        write_table(frame_from_pandas(self.spark, record, "runs"), self.config, "runs")


def _write_input_tables(spark: SparkSession, config: Config, step: str, frames: dict) -> StepRun:
    with StepRun(spark, config, step) as run:
        for table, frame in frames.items():
            run.write(table, frame_from_pandas(spark, frame, table))
    return run


def generate_sample(spark: SparkSession, config: Config) -> StepRun:
    """Write the seeded sample lakehouse (catalogue, behaviour, queries, ground truth) as Delta tables."""
    from llmrank_spark.sample_data import generate_sample as generate

    return _write_input_tables(spark, config, "generate-sample", generate(config.sample))


def ingest_movielens(spark: SparkSession, config: Config, path: str | Path) -> StepRun:
    """Turn MovieLens 100K files into the items, interactions and users input tables."""
    from llmrank_spark.movielens import load_movielens

    return _write_input_tables(spark, config, "ingest-movielens", load_movielens(path))


def candidates(spark: SparkSession, config: Config) -> StepRun:
    """First stage: blended multi-source candidate lists for every active user."""
    from llmrank_spark.candidates import build_candidates

    with StepRun(spark, config, "candidates") as run:
        lists = build_candidates(
            spark,
            run.read("items"),
            run.read("interactions"),
            run.read_optional("users"),
            config.candidates,
            config.run.run_date,
        )
        with materialised(lists.candidates):
            run.write("candidates", lists.candidates)
            run.write("rejects", lists.rejects)
    return run


def rerank(spark: SparkSession, config: Config) -> StepRun:
    """Second stage: score every candidate with the broadcast BERT model and keep each list's top-K."""
    from llmrank_spark.ranking import rerank_candidates

    with StepRun(spark, config, "rerank") as run:
        config = _with_registered_model(spark, config)
        todays = run.read("candidates").where(F.col("run_date") == F.lit(config.run.run_date))
        items, interactions = run.read("items"), run.read("interactions")
        # Events of a type the candidates step rejected (no weight) are not history here either.
        known_events = interactions.where(F.col("event_type").isin(list(config.candidates.event_weights)))
        result = rerank_candidates(
            spark,
            todays,
            items,
            known_events,
            config.rerank,
            config.run.run_date,
            queries=run.read_optional("queries"),
            faults=config.faults,
            reorder=fairness_pass(items, known_events, config),
        )
        with materialised(result.outcome):
            run.write("ranked", result.ranked)
            run.write("rejects", result.rejects)
    return run


def fairness_pass(items: DataFrame, interactions: DataFrame, config: Config):
    """The per-list fairness/diversity pass of `config.fairness`, or None when it is off."""
    if config.fairness.mode == "off":
        return None
    from llmrank_spark.evaluate import catalogue_frame, item_counts_until
    from llmrank_spark.fairness import list_reorderer, provider_policy, with_providers

    catalogue = with_providers(catalogue_frame(items), config.fairness.provider_attribute)
    counts = item_counts_until(interactions, config.run.run_date)
    policy = provider_policy(catalogue, counts, config.fairness.long_tail_head_share)
    return list_reorderer(policy, config.fairness, catalogue.set_index("item_id")["category"])


def evaluate(spark: SparkSession, config: Config) -> StepRun:
    """Measure the run's lists (retrieval, model and fair order) into `metrics` and write the run report."""
    from llmrank_spark.evaluate import evaluate_tables
    from llmrank_spark.report import write_report

    with StepRun(spark, config, "evaluate") as run:
        tables = {table: run.read(table) for table in ("ranked", "candidates", "items", "interactions")} | {
            table: run.read_optional(table) for table in ("users", "query_labels")
        }
        rows = evaluate_tables(tables, config).assign(run_date=config.run.run_date)
        run.write("metrics", frame_from_pandas(spark, rows, "metrics"))
        history = read_table(spark, config, "metrics", version=run.outputs["metrics"]).toPandas()
        report = write_report(history, config)
        run.notes += [f"report: {report.index}", *report.summary]
    return run


def _with_registered_model(spark: SparkSession, config: Config) -> Config:
    """rerank.mode=cross_encoder without a model_path serves the newest registered version, if any (with
    none, `cross_encoder_spec` refuses, naming the fix)."""
    from llmrank_spark.training import latest_registered

    if config.rerank.mode != "cross_encoder" or config.rerank.model_path is not None:
        return config
    path = latest_registered(spark, config)
    if path is None:
        return config
    return config.model_copy(update={"rerank": config.rerank.model_copy(update={"model_path": path})})


def train(spark: SparkSession, config: Config) -> StepRun:
    """Fine-tune the reranker on the interactions and register the new version (warm-started from the
    newest registered one when train.warm_start)."""
    from llmrank_spark.training import latest_registered, train_reranker

    with StepRun(spark, config, "train") as run:
        warm_from = latest_registered(spark, config) if config.train.warm_start else None
        interactions = run.read("interactions")
        row, _ = train_reranker(
            spark,
            run.read("items"),
            interactions,
            run.read_optional("users"),
            config,
            data_snapshot=f"interactions@v{run.inputs['interactions']}",
            warm_from=warm_from,
        )
        run.write("model_registry", frame_from_pandas(spark, row, "model_registry"))
    return run


def attributes(spark: SparkSession, config: Config) -> StepRun:
    """Attribute orders: which attributes of each top-ranked item matter most to the request, by occlusion."""
    from llmrank_spark.attributes import attribute_orders, orders_by_segment

    with StepRun(spark, config, "attributes") as run:
        items = run.read("items")
        queries = run.read_optional("queries")
        orders = attribute_orders(
            spark,
            run.read("ranked").where(F.col("run_date") == F.lit(config.run.run_date)),
            items,
            run.read("interactions"),
            config.rerank,
            config.attributes,
            config.run.run_date,
            queries=queries,
        )
        run.write("attribute_order", orders)
        # The segment table is aggregated from the partition just written, not from `orders`: that would
        # score every variant a second time.
        written = read_table(spark, config, "attribute_order", version=run.outputs["attribute_order"])
        todays = written.where(F.col("run_date") == F.lit(config.run.run_date))
        by_segment = orders_by_segment(todays, items, run.read_optional("users"), queries)
        run.write("attribute_order_by_segment", by_segment)
    return run


NIGHTLY_STEPS: dict[str, Callable[[SparkSession, Config], StepRun]] = {
    "candidates": candidates,
    "rerank": rerank,
    "attributes": attributes,
    "evaluate": evaluate,
}


def nightly(spark: SparkSession, config: Config) -> list[StepRun]:
    """Every nightly step in order, for one run_date."""
    return [step(spark, config) for step in NIGHTLY_STEPS.values()]
