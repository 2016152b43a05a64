"""The run log: one `runs` row per step with rows read and written, seconds and warnings."""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import Config
from llmrank_spark.lakehouse import (
    LOCAL_CHECKPOINTS,
    contract,
    frame_from_pandas,
    has_checkpoint_dir,
    latest_commit,
    latest_version,
    load,
    read_table,
    table_exists,
    write_table,
)
from llmrank_spark.pipeline.preflight import (
    check_writable,
)
from llmrank_spark.pipeline.progress import Progress, say

LOG = logging.getLogger(__name__)


@contextmanager
def materialised(
    frame: DataFrame, progress: AbstractContextManager[object] | None = None
) -> Iterator[DataFrame]:
    """`frame` computed once, in full, before the block writes anything derived from it.

    A step whose outputs share expensive work (the model's scores) then does that work once, and a
    failure in it (a crashed scorer, an injected fault) happens before the first commit: every output
    table keeps its previous version. Cached blocks lost with an executor are recomputed by Spark.
    `progress` (say, `Progress.sized`) is entered while that work runs.

    On disk, not in memory: the frame is read back only by the writes, and it is the size of the step's
    output (5 million candidate rows at 50,000 users), which held in an executor's storage memory
    competes with the tasks that follow for its heap.
    """
    frame.persist(StorageLevel.DISK_ONLY)
    try:
        with progress or nullcontext():
            frame.count()
        yield frame
    finally:
        frame.unpersist()


class StepRun:
    """One step's run: pinned reads, checked writes, and a row in `runs` whether it succeeds or fails."""

    def __init__(self, spark: SparkSession, config: Config, step: str) -> None:
        self.spark, self.config, self.step = spark, config, step
        self.inputs: dict[str, int | None] = {}
        self.outputs: dict[str, int] = {}
        self.rows: dict[str, int] = {}
        self.seconds = 0.0
        self.notes: list[str] = []  # lines a person should read after the step (e.g. the run report)
        self.warnings: list[str] = []  # what the step skipped or degraded: in `runs` and the summary

    def __enter__(self) -> StepRun:
        self._started_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        self._clock = time.perf_counter()
        say(f"[{self.step}] started for run_date {self.config.run.run_date}")
        self.progress = Progress(self.spark, self.step)
        self.progress.start()
        if not has_checkpoint_dir(self.spark):
            self.warn(LOCAL_CHECKPOINTS)
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """Write the `runs` row. When the step failed and the row cannot be written either (say, a
        read-only lakehouse), the step's own error is what propagates; the row's failure is logged and
        noted on it, never put in its place. A step that succeeds prints its summary."""
        self.progress.stop()
        self.seconds = time.perf_counter() - self._clock
        try:
            self._log(status="failed" if error else "succeeded", error=str(error) if error else None)
        except Exception as log_error:
            if error is None:
                raise
            LOG.warning("step %s: could not write its runs row", self.step, exc_info=log_error)
            first_line = (str(log_error).strip().splitlines() or [type(log_error).__name__])[0][:300]
            error.add_note(f"(the failed run could not be logged to table 'runs' either: {first_line})")
        if error is None:
            say(self.summary())

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
        """Write `table` and log its new version and the rows the commit wrote (Delta's own count, so the
        written partition is not read back; counted when the commit does not say)."""
        write_table(frame, self.config, table, self.config.run.run_date, self.step)
        version, rows = latest_commit(self.spark, self.config, table)
        if rows is None:
            written = load(self.spark, self.config.table_path(table))
            partition_by = contract(table).partition_by
            if "run_date" in partition_by:
                written = written.where(F.col("run_date") == F.lit(self.config.run.run_date))
            if "step" in partition_by:
                written = written.where(F.col("step") == F.lit(self.step))
            rows = written.count()
        self.rows[table] = rows
        self.outputs[table] = version

    def record(self, table: str, rows: int) -> None:
        """Log a table the step changed itself (a Delta MERGE, not `write`): its new version and the rows
        it wrote."""
        self.rows[table] = rows
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
    columns = ("started_at", "step", "status", "seconds", "inputs", "outputs", "rows")
    log: pd.DataFrame = runs.select(*columns).toPandas()
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
