"""Checks each step makes before its expensive work, so a run that cannot succeed fails in seconds.

Each check is cheap: one Spark aggregation over a key column or a timestamp, or one probe file per output
location. A failing check raises `PreflightError`, naming the table, column, key or path and what to do;
the step's inputs and outputs are then untouched. docs/reliability.md lists the faults each check catches.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import uuid
from collections.abc import Callable, Iterable
from typing import Protocol

import pyarrow as pa
import pyarrow.fs as pafs
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import Config, is_catalog_name
from llmrank_spark.events import end_of_day, events_until
from llmrank_spark.lakehouse import contract, is_connect

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

    A probe file is created and deleted in the table's directory and its `_delta_log` when the table
    exists, else in its nearest existing parent, so local disks and object stores are checked alike.
    A classic session probes through the Hadoop filesystem Spark writes with; a Spark Connect client has no
    JVM, so it probes with pyarrow's filesystems, and skips locations whose scheme pyarrow cannot open
    (the write then reports its own error). Catalog tables are left to the catalog's permissions.
    """
    filesystem: _Filesystem = _ArrowFilesystem() if is_connect(spark) else _HadoopFilesystem(spark)
    for table in tables:
        location = config.table_path(table)
        if is_catalog_name(location) or not filesystem.opens(location):
            continue
        if filesystem.exists(location):
            probes: list[str | None] = [location, f"{location.rstrip('/')}/_delta_log"]
        else:
            parent = filesystem.parent(location)
            while parent is not None and not filesystem.exists(parent):
                parent = filesystem.parent(parent)
            probes = [parent]
        for directory in probes:
            if directory is None or not filesystem.exists(directory):
                continue
            try:
                filesystem.create_and_delete(f"{directory.rstrip('/')}/.llmrank-preflight-{uuid.uuid4().hex}")
            except Exception as error:
                raise PreflightError(
                    f"table '{table}': output location {location} is not writable ({directory}: "
                    f"{filesystem.cause(error)}); make it writable, or point lakehouse.root or "
                    f"lakehouse.tables.{table} at a writable location"
                ) from None


class _Filesystem(Protocol):
    def opens(self, location: str) -> bool: ...
    def exists(self, location: str) -> bool: ...
    def parent(self, location: str) -> str | None: ...
    def create_and_delete(self, location: str) -> None: ...
    def cause(self, error: Exception) -> str: ...


class _HadoopFilesystem:
    """The Hadoop filesystem of a classic session's JVM: the one its Delta writes go through."""

    def __init__(self, spark: SparkSession) -> None:
        jvm = spark.sparkContext._jvm  # classic only: check_writable picks this class for classic sessions
        assert jvm is not None  # the driver's py4j gateway (None only on executors)
        self._path = jvm.org.apache.hadoop.fs.Path
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _fs(self, location: str):
        path = self._path(location)
        return path, path.getFileSystem(self._conf)

    def opens(self, location: str) -> bool:
        return True

    def exists(self, location: str) -> bool:
        path, fs = self._fs(location)
        return bool(fs.exists(path))

    def parent(self, location: str) -> str | None:
        parent = self._path(location).getParent()
        return None if parent is None else str(parent.toString())

    def create_and_delete(self, location: str) -> None:
        path, fs = self._fs(location)
        fs.create(path, False).close()
        fs.delete(path, False)

    def cause(self, error: Exception) -> str:
        java = getattr(error, "java_exception", None)  # a Py4JJavaError wrapping the filesystem's IOException
        return (str(java.toString()) if java is not None else str(error)).strip().splitlines()[0][:300]


class _ArrowFilesystem:
    """pyarrow's filesystems (local, S3, GCS, HDFS, Azure), for a client without a JVM."""

    def opens(self, location: str) -> bool:
        try:
            pafs.FileSystem.from_uri(location)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            return False
        return True

    def exists(self, location: str) -> bool:
        fs, path = pafs.FileSystem.from_uri(location)
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def parent(self, location: str) -> str | None:
        scheme, separator, path = location.rpartition("://")
        parent = posixpath.dirname(path.rstrip("/"))
        return None if parent == path.rstrip("/") or not parent else f"{scheme}{separator}{parent}"

    def create_and_delete(self, location: str) -> None:
        fs, path = pafs.FileSystem.from_uri(location)
        fs.open_output_stream(path).close()
        fs.delete_file(path)

    def cause(self, error: Exception) -> str:
        return str(error).strip().splitlines()[0][:300]
