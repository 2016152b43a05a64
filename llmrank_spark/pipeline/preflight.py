"""Checks each step makes before its expensive work, so a run that cannot succeed fails in seconds.

Each check is cheap: one Spark aggregation over a key column or a timestamp, or one probe file per output
location. A failing check raises `PreflightError`, naming the table, column, key or path and what to do;
the step's inputs and outputs are then untouched. docs/reliability.md lists the faults each check catches.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import Config, is_catalog_name
from llmrank_spark.events import end_of_day, events_until
from llmrank_spark.lakehouse import contract

# Input tables whose contract key identifies one row: a second row of a key is a second, conflicting
# version of the same item, user or query. (An interaction repeated is two events, not a conflict.)
UNIQUE_KEY_TABLES = ("items", "users", "queries", "query_labels")


class PreflightError(RuntimeError):
    """A step cannot run as configured on these inputs; the message names what is wrong and the fix."""


def check_unique_keys(frame: DataFrame | None, table: str) -> None:
    """Fail, naming one duplicated key and its count, when a key of `table` is on more than one row."""
    if frame is None or table not in UNIQUE_KEY_TABLES:
        return
    keys = contract(table).keys
    repeated = frame.groupBy(*keys).count().where(F.col("count") > 1)
    first = repeated.limit(1).collect()
    if first:
        named, rows = ", ".join(f"{key}='{first[0][key]}'" for key in keys), first[0]["count"]
        raise PreflightError(
            f"table '{table}': key ({', '.join(keys)}) is not unique: {named} is on {rows} rows; "
            f"keep one row per key upstream (deduplicate the table) and re-run"
        )


def check_run_date(interactions: DataFrame, run_date: dt.date) -> None:
    """Fail when the interactions hold events but none up to the end of run_date: a run dated before its
    data is a wrong date, not a cold start (an empty interactions table is one, and passes)."""
    first, last = interactions.agg(F.min("event_ts"), F.max("event_ts")).collect()[0]
    if first is not None and first >= end_of_day(run_date):
        raise PreflightError(
            f"run.run_date {run_date} is before every event of table 'interactions' (events from {first} "
            f"to {last}); set run.run_date to a date within or after that range"
        )


def fairness_blocker(items: DataFrame, interactions: DataFrame, config: Config) -> str | None:
    """Why the fairness pass cannot run on these inputs (no item has a provider, or no event up to the
    run date measures the providers' popularity), or None when it can."""
    attribute = config.fairness.provider_attribute
    provider = F.col("brand") if attribute is None else F.col("attributes")[attribute]
    what = "column 'brand'" if attribute is None else f"attribute '{attribute}' (fairness.provider_attribute)"
    if items.where(provider.isNotNull()).limit(1).count() == 0:
        return f"no item of table 'items' has a provider: {what} is absent or null on every row"
    if events_until(interactions, config.run.run_date).limit(1).count() == 0:
        return (
            f"table 'interactions' has no event up to run.run_date {config.run.run_date}, so no provider's "
            f"popularity can be measured"
        )
    return None


def fairness_runs(
    items: DataFrame, interactions: DataFrame, config: Config, warn: Callable[[str], None]
) -> bool:
    """Whether the step runs its fairness pass: configured on and possible on these inputs.

    When it is on but impossible, `fairness.require_providers` decides: fail now, or skip the pass and
    `warn` (the step's run log and summary).
    """
    if config.fairness.mode == "off":
        return False
    blocker = fairness_blocker(items, interactions, config)
    if blocker is None:
        return True
    if config.fairness.require_providers:
        raise PreflightError(
            f"fairness pass (fairness.mode={config.fairness.mode}) cannot run: {blocker}. Give items a "
            f"brand (or set fairness.provider_attribute), or set fairness.mode=off, or set "
            f"fairness.require_providers=false to skip the pass with a warning"
        )
    warn(f"fairness pass skipped: {blocker}; the lists are in model order")
    return False


def check_partition(frame: DataFrame, table: str, run_date: dt.date, writer: str) -> None:
    """Fail when `table` has no rows for run_date: the step before this one has not run for it."""
    if frame.where(F.col("run_date") == F.lit(run_date)).limit(1).count() == 0:
        raise PreflightError(
            f"table '{table}' has no rows for run_date {run_date}; run `llmrank {writer}` for that date first"
        )


def check_writable(spark: SparkSession, config: Config, tables: Iterable[str]) -> None:
    """Fail, naming the table and path, when an output location cannot be written.

    A probe file is created and deleted through the Hadoop filesystem Spark writes with, in the table's
    directory and its `_delta_log` when the table exists, else in its nearest existing parent, so local
    disks and object stores are checked alike. Catalog tables are left to the catalog's permissions.
    """
    jvm = spark.sparkContext._jvm
    assert jvm is not None  # the driver's py4j gateway (None only on executors)
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
    for table in tables:
        location = config.table_path(table)
        if is_catalog_name(location):
            continue
        path = jvm.org.apache.hadoop.fs.Path(location)
        fs = path.getFileSystem(hadoop_conf)
        if fs.exists(path):
            probes = [path, jvm.org.apache.hadoop.fs.Path(path, "_delta_log")]
        else:
            parent = path.getParent()
            while parent is not None and not fs.exists(parent):
                parent = parent.getParent()
            probes = [parent]
        for directory in probes:
            if directory is None or not fs.exists(directory):
                continue
            _probe(jvm, fs, directory, table, location)


def _probe(jvm, fs, directory, table: str, location: str) -> None:
    probe = jvm.org.apache.hadoop.fs.Path(directory, f".llmrank-preflight-{uuid.uuid4().hex}")
    try:
        fs.create(probe, False).close()
        fs.delete(probe, False)
    except Exception as error:  # a Py4JJavaError wrapping the filesystem's IOException
        java = getattr(error, "java_exception", None)
        cause = (str(java.toString()) if java is not None else str(error)).strip().splitlines()[0][:300]
        raise PreflightError(
            f"table '{table}': output location {location} is not writable ({directory}: {cause}); make it "
            f"writable, or point lakehouse.root or lakehouse.tables.{table} at a writable location"
        ) from None
