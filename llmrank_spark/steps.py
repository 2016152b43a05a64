"""The Spark layer of each nightly step: read the contracted inputs, call the stage, write the output.

`jobs/*.py` (spark-submit) and the `llmrank` console command both call these functions, so a
notebook, a scheduled job and a developer's terminal run exactly the same code. Every step runs
inside a `StepRun`, which pins the Delta version of each input it reads and logs what it read and
wrote to the `runs` table, so any output row can be traced to its inputs and model.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
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
from llmrank_spark.preflight import (
    PreflightError,
    check_partition,
    check_run_date,
    check_unique_keys,
    check_writable,
    fairness_runs,
)
from llmrank_spark.tables import (
    REQUEST_KEY,
    contract,
    frame_from_pandas,
    in_hashed_share,
    latest_version,
    load,
    read_table,
    table_exists,
    write_table,
)

LOG = logging.getLogger(__name__)


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
        self.warnings: list[str] = []  # what the step skipped or degraded: in `runs` and the summary

    def __enter__(self) -> StepRun:
        self._started_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        self._clock = time.perf_counter()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """Write the `runs` row. When the step failed and the row cannot be written either (say, a
        read-only lakehouse), the step's own error is what propagates; the row's failure is logged and
        noted on it, never put in its place."""
        self.seconds = time.perf_counter() - self._clock
        try:
            self._log(status="failed" if error else "succeeded", error=str(error) if error else None)
        except Exception as log_error:
            if error is None:
                raise
            LOG.warning("step %s: could not write its runs row", self.step, exc_info=log_error)
            first_line = (str(log_error).strip().splitlines() or [type(log_error).__name__])[0][:300]
            error.add_note(f"(the failed run could not be logged to table 'runs' either: {first_line})")

    def read(self, table: str) -> DataFrame:
        """The table at its current version, pinned, so what was read is exactly what is logged."""
        version = latest_version(self.spark, self.config, table) if self._exists(table) else None
        frame = read_table(self.spark, self.config, table, version=version)
        self.inputs[table] = version
        return frame

    def read_optional(self, table: str) -> DataFrame | None:
        return self.read(table) if self._exists(table) else None

    def check_outputs(self, *tables: str) -> None:
        """Preflight: fail now, naming the table and path, if any output of the step (or `runs`) cannot be
        written, instead of after the expensive work."""
        check_writable(self.spark, self.config, [*tables, "runs"])

    def warn(self, warning: str) -> None:
        self.warnings.append(warning)
        LOG.warning("step %s: %s", self.step, warning)

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
        warnings = [f"WARNING: {warning}" for warning in self.warnings]
        return f"[{self.step}] {self.seconds:.1f}s\n  " + "\n  ".join(lines + warnings + self.notes)

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
                    "config": self.config.redacted_json(),
                    "error": error,
                    "warnings": self.warnings or None,
                }
            ]
        )
        write_table(frame_from_pandas(self.spark, record, "runs"), self.config, "runs")


def run_log(spark: SparkSession, config: Config) -> pd.DataFrame:
    """The `runs` rows of config.run.run_date, oldest first: each step's status, time, the Delta versions it
    read and wrote and the rows it wrote, so a person can trace the run's tables to their inputs."""
    runs = read_table(spark, config, "runs").where(F.col("run_date") == F.lit(config.run.run_date))
    log = runs.select("started_at", "step", "status", "seconds", "inputs", "outputs", "rows").toPandas()
    return log.sort_values("started_at", kind="mergesort").reset_index(drop=True)


def format_run_log(log: pd.DataFrame) -> str:
    """One line per step run: `step status seconds | read table@vN ... | wrote table@vN (rows) ...`."""

    def versions(mapping) -> str:
        return ", ".join(f"{table}@v{version}" for table, version in sorted(dict(mapping).items())) or "-"

    lines = []
    for run in log.itertuples():
        wrote = ", ".join(
            f"{table}@v{version} ({dict(run.rows).get(table, 0):,} rows)"
            for table, version in sorted(dict(run.outputs).items())
        )
        took = f"{run.step:<16} {run.status:<9} {run.seconds:7.1f}s"
        lines.append(f"{took} | read {versions(run.inputs)} | wrote {wrote or '-'}")
    return "\n".join(lines)


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
        run.check_outputs("candidates", "rejects")
        items, interactions, users = run.read("items"), run.read("interactions"), run.read_optional("users")
        _check_inputs(config, items=items, interactions=interactions, users=users)
        lists = build_candidates(spark, items, interactions, users, config.candidates, config.run.run_date)
        with materialised(lists.candidates):
            run.write("candidates", lists.candidates)
            run.write("rejects", lists.rejects)
    return run


def rerank(spark: SparkSession, config: Config) -> StepRun:
    """Second stage: score every candidate with the broadcast BERT model and keep each list's top-K."""
    from llmrank_spark.champion import served_config
    from llmrank_spark.ranking import model_for, rerank_candidates

    with StepRun(spark, config, "rerank") as run:
        config = served_config(spark, _with_registered_model(spark, config))
        spec, served = model_for(config.rerank)  # preflight: the model artifact exists and is complete
        run.check_outputs("ranked", "rejects")
        candidates = run.read("candidates")
        check_partition(candidates, "candidates", config.run.run_date, "candidates")
        items, interactions, queries = (
            run.read("items"),
            run.read("interactions"),
            run.read_optional("queries"),
        )
        # Read only when the served model states user text, so `runs` lists what the step used.
        users = run.read_optional("users") if served.user_template else None
        _check_inputs(config, items=items, interactions=interactions, users=users, queries=queries)
        # Events of a type the candidates step rejected (no weight) are not history here either.
        known_events = interactions.where(F.col("event_type").isin(list(config.candidates.event_weights)))
        fair = fairness_runs(items, known_events, config, run.warn)
        result = rerank_candidates(
            spark,
            candidates.where(F.col("run_date") == F.lit(config.run.run_date)),
            items,
            known_events,
            config.rerank,
            config.run.run_date,
            queries=queries,
            users=users,
            faults=config.faults,
            candidates_cfg=config.candidates,
        )
        run.notes.append(f"served model: {spec.version}")
        with materialised(result.outcome):
            ranked = fairness_pass(result.ranked, items, known_events, config) if fair else result.ranked
            run.write("ranked", ranked)
            run.write("rejects", result.rejects)
    return run


def fairness_pass(ranked: DataFrame, items: DataFrame, interactions: DataFrame, config: Config) -> DataFrame:
    """`ranked` (model order) re-ordered by the run's fairness/diversity pass; as it is when that is off.

    With `fairness.strategy` run, the provider boosts are fitted on the driver over a hashed sample of at
    most `fairness.fit_requests` whole lists (`fairness.run_reorderer`); then every list is re-ordered in
    its own pandas call.
    """
    if config.fairness.mode == "off":
        return ranked
    from llmrank_spark.evaluate import catalogue_frame, item_counts_until, one_request_column
    from llmrank_spark.fairness import provider_policy, run_reorderer, with_providers

    catalogue = with_providers(catalogue_frame(items), config.fairness.provider_attribute)
    counts = item_counts_until(interactions, config.run.run_date)
    policy = provider_policy(catalogue, counts, config.fairness.long_tail_head_share)
    model_order = None
    if config.fairness.strategy == "run":
        requests = ranked.select(*REQUEST_KEY).distinct().count()
        share = min(1.0, config.fairness.fit_requests / max(requests, 1))
        model_order = one_request_column(ranked.where(in_hashed_share(share, *REQUEST_KEY))).toPandas()
    category = catalogue.set_index("item_id")["category"]
    reorder = run_reorderer(policy, config.fairness, category, model_order=model_order)
    columns = ranked.columns
    return ranked.groupBy(*REQUEST_KEY).applyInPandas(lambda one: reorder(one)[columns], ranked.schema)


def evaluate(spark: SparkSession, config: Config) -> StepRun:
    """Measure the run's lists (retrieval, model and fair order) into `metrics` and write the run report."""
    from llmrank_spark.evaluate import evaluate_tables
    from llmrank_spark.report import write_report

    with StepRun(spark, config, "evaluate") as run:
        run.check_outputs("metrics")
        _check_report_writable(config)
        tables = {table: run.read(table) for table in ("ranked", "candidates", "items", "interactions")} | {
            table: run.read_optional(table) for table in ("users", "query_labels")
        }
        check_partition(tables["ranked"], "ranked", config.run.run_date, "rerank")
        _check_inputs(config, **tables)
        if not fairness_runs(tables["items"], tables["interactions"], config, run.warn):
            config = config.model_copy(
                update={"fairness": config.fairness.model_copy(update={"mode": "off"})}
            )
        rows = evaluate_tables(tables, config).assign(run_date=config.run.run_date)
        run.write("metrics", frame_from_pandas(spark, rows, "metrics"))
        history = read_table(spark, config, "metrics", version=run.outputs["metrics"]).toPandas()
        report = write_report(history, config)
        run.notes += [f"report: {report.index}", *report.summary]
    return run


def _check_inputs(config: Config, **tables: DataFrame | None) -> None:
    """Preflight of the inputs a step read: unique keys where the contract's key names one row, and a
    run date not before every event."""
    for table, frame in tables.items():
        check_unique_keys(frame, table)
    if tables.get("interactions") is not None:
        check_run_date(tables["interactions"], config.run.run_date)


def _check_report_writable(config: Config) -> None:
    """Preflight of the evaluate step's report directory, <lakehouse.root>/reports."""
    reports = Path(config.lakehouse.root) / "reports"
    parent = next(p for p in (reports, *reports.parents) if p.exists())
    if not os.access(parent, os.W_OK) or not parent.is_dir():
        raise PreflightError(
            f"report directory {reports} is not writable ({parent}); make lakehouse.root writable"
        )


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
    """Fine-tune the reranker, gate it against the retrieval order and the champion on the last
    `train.gate_days`, and register it (as the new champion only if it passed; `champion.py`).
    Warm-started from the newest registered version when train.warm_start."""
    from llmrank_spark.champion import (
        CHAMPION,
        REJECTED,
        champion_path,
        gate_cutoff,
        gate_version,
        training_end,
    )
    from llmrank_spark.training import latest_registered, train_reranker

    with StepRun(spark, config, "train") as run:
        run.check_outputs("model_registry")
        warm_from = latest_registered(spark, config) if config.train.warm_start else None
        items, interactions, users = run.read("items"), run.read("interactions"), run.read_optional("users")
        _check_inputs(config, items=items, interactions=interactions, users=users)
        gated = config.train.gate_days > 0
        # The gate's days stay out of training: the version is judged on days it never saw.
        seen = interactions.where(F.col("event_ts") < F.lit(training_end(config))) if gated else interactions
        row, _ = train_reranker(
            spark,
            items,
            seen,
            users,
            config,
            data_snapshot=f"interactions@v{run.inputs['interactions']}",
            warm_from=warm_from,
        )
        status = "registered"
        if gated:
            result = gate_version(
                spark, items, interactions, config, row["path"].iloc[0], champion_path(spark, config)
            )
            status = CHAMPION if result.promoted else REJECTED
            row.at[0, "metrics"] = {**row["metrics"].iloc[0], **result.metrics()}
            run.notes.append(
                f"gate on {result.requests} users after {gate_cutoff(config)}: NDCG@10 retrieval "
                f"{result.retrieval_ndcg:.4f} -> version {result.version_ndcg:.4f} "
                f"({result.change:+.1%} [{result.change_low:+.1%}, {result.change_high:+.1%}]): "
                f"{status}, {result.reason}"
            )
        run.write("model_registry", frame_from_pandas(spark, row.assign(status=status), "model_registry"))
    return run


def attributes(spark: SparkSession, config: Config) -> StepRun:
    """Attribute orders: which attributes of each top-ranked item matter most to the request, by occlusion."""
    from llmrank_spark.attributes import attribute_orders, orders_by_segment
    from llmrank_spark.champion import served_config
    from llmrank_spark.ranking import model_for

    with StepRun(spark, config, "attributes") as run:
        config = served_config(spark, _with_registered_model(spark, config))
        model_for(config.rerank)  # preflight: the model artifact exists and is complete
        run.check_outputs("attribute_order", "attribute_order_by_segment")
        items, interactions = run.read("items"), run.read("interactions")
        queries, users = run.read_optional("queries"), run.read_optional("users")
        ranked = run.read("ranked")
        check_partition(ranked, "ranked", config.run.run_date, "rerank")
        _check_inputs(config, items=items, interactions=interactions, users=users, queries=queries)
        orders = attribute_orders(
            spark,
            ranked.where(F.col("run_date") == F.lit(config.run.run_date)),
            items,
            interactions,
            config.rerank,
            config.attributes,
            config.run.run_date,
            queries=queries,
            users=users,
        )
        run.write("attribute_order", orders)
        # The segment table is aggregated from the partition just written, not from `orders`: that would
        # score every variant a second time.
        written = read_table(spark, config, "attribute_order", version=run.outputs["attribute_order"])
        todays = written.where(F.col("run_date") == F.lit(config.run.run_date))
        by_segment = orders_by_segment(todays, items, users, queries)
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
