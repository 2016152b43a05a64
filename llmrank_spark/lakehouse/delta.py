"""Delta reads and writes: one run date replaced atomically, UTF-8 checked, versions for rollback."""

from __future__ import annotations

import datetime as dt

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from llmrank_spark.config import Config, is_catalog_name
from llmrank_spark.lakehouse.contracts import (
    ContractError,
    check_keys_not_null,
    check_schema,
    conform,
    contract,
    only_partition,
    partition_mismatch,
)


def load(spark: SparkSession, location: str, version: int | None = None) -> DataFrame:
    """Read a Delta table by path or catalog name, optionally pinned to a version (time travel)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.table(location) if is_catalog_name(location) else reader.load(location)


def table_exists(spark: SparkSession, config: Config, table: str) -> bool:
    location = config.table_path(table)
    if is_catalog_name(location):
        return spark.catalog.tableExists(location)
    try:
        load(spark, location).schema  # noqa: B018  # resolving the schema reads the Delta log, or fails
    except AnalysisException:
        return False
    return True


def sql_name(location: str) -> str:
    """The table in Delta's SQL: its catalog name with each part quoted, or delta.`path`. Locations passed
    check_location, so a name is plain identifiers and a path holds no backtick or quote."""
    if is_catalog_name(location):
        return ".".join(f"`{part}`" for part in location.split("."))
    return f"delta.`{location}`"


def create_clustered(df: DataFrame, location: str, columns: list[str]) -> None:
    """Create the table with liquid clustering on `columns` unless it exists.

    SQL, because Delta refuses DataFrameWriterV2's clusterBy ("partitioning by expressions").
    """
    schema = ", ".join(f"`{field.name}` {field.dataType.simpleString()}" for field in df.schema.fields)
    clustering = ", ".join(f"`{column}`" for column in columns)
    df.sparkSession.sql(
        f"CREATE TABLE IF NOT EXISTS {sql_name(location)} ({schema}) USING delta CLUSTER BY ({clustering})"
    )


def latest_commit(spark: SparkSession, config: Config, table: str) -> tuple[int, int | None]:
    """The table's current Delta version (what a reader that starts now sees) and the rows its commit
    wrote, from Delta's own operation metrics: None when the commit does not say (an empty write)."""
    # Delta's SQL rather than the DeltaTable API, which needs Delta's own server plugin under Spark Connect.
    newest = (
        spark.sql(f"DESCRIBE HISTORY {sql_name(config.table_path(table))} LIMIT 1")
        .select("version", "operationMetrics")
        .first()
    )
    assert newest is not None  # a Delta table has at least its creating commit
    rows = (newest["operationMetrics"] or {}).get("numOutputRows")
    return int(newest["version"]), None if rows is None else int(rows)


def latest_version(spark: SparkSession, config: Config, table: str) -> int:
    """The table's current Delta version: what a reader that starts now sees."""
    return latest_commit(spark, config, table)[0]


def read_table(
    spark: SparkSession, config: Config, table: str, *, version: int | None = None, check_nulls: bool = True
) -> DataFrame:
    """Read a Delta table (at `version`, if given), enforce its contract, return the contract's columns."""
    location = config.table_path(table)
    if not table_exists(spark, config, table):
        raise ContractError(
            f"table '{table}' not found as a Delta table at {location}; "
            f"create the inputs with `llmrank generate-sample` or `llmrank ingest movielens PATH`, "
            f"or run the step that writes it"
        )
    df = load(spark, location, version)
    check_schema(df, table, location)
    if check_nulls:
        check_keys_not_null(df, table, location)
    return valid_utf8(conform(df, table), table)


def valid_utf8(df: DataFrame, table: str) -> DataFrame:
    """The contract's text columns with invalid UTF-8 byte sequences replaced by U+FFFD.

    A Spark string may hold any bytes (a cast from binary does not check them), but Arrow, and so every
    pandas UDF, refuses invalid UTF-8: one bad byte in a title would fail the whole nightly job.
    """
    repair = {
        "string": F.make_valid_utf8,
        "array<string>": lambda c: F.transform(c, F.make_valid_utf8),
        "map<string,string>": lambda c: F.transform_values(
            F.transform_keys(c, lambda k, _: F.make_valid_utf8(k)), lambda _, v: F.make_valid_utf8(v)
        ),
    }
    return df.select(
        *[
            repair[c.type](F.col(c.name)).alias(c.name) if c.type in repair else F.col(c.name)
            for c in contract(table).columns
        ]
    )


def write_table(
    df: DataFrame, config: Config, table: str, run_date: dt.date | None = None, step: str | None = None
) -> str:
    """Write a table, checked against its contract before a byte is written.

    Tables partitioned (or, with `lakehouse.layout: liquid`, clustered) by run_date get that date replaced
    atomically (Delta ``replaceWhere``), so re-running a date never duplicates rows and readers see either
    the old or the new partition; tables
    partitioned by (run_date, step), like `rejects`, get only that step's partition of the date replaced.
    Append-only tables (the run log, the model registry) get one appending commit; other tables are
    overwritten whole in one commit. Returns the table's location.
    """
    spec = contract(table)
    location = config.table_path(table)
    check_schema(df, table, f"write to {location}")
    df = conform(df, table)
    liquid = config.lakehouse.layout == "liquid" and bool(spec.partition_by)
    checked: list[str] = []  # the errors `only_partition` may raise during this write
    if liquid:
        keys = [c for c in ("request_id",) if c in df.columns and c not in spec.partition_by]
        create_clustered(df, location, [*spec.partition_by, *keys])
    if spec.append_only:
        # mergeSchema: a column added to an append-only contract (optional, so compatible) joins the table.
        writer = df.write.format("delta").mode("append").option("mergeSchema", "true")
        if spec.partition_by and not liquid:
            writer = writer.partitionBy(*spec.partition_by)
    elif "run_date" in spec.partition_by:
        if run_date is None:
            raise ValueError(f"table '{table}' is partitioned by run_date: pass the run's date")
        df = only_partition(df, table, "run_date", run_date)
        checked.append(partition_mismatch(table, "run_date", run_date))
        # run_date is a datetime.date, so the predicate below is a literal we formatted, never user text.
        replace = f"run_date = DATE'{run_date.isoformat()}'"
        if "step" in spec.partition_by:
            df = only_partition(df, table, "step", step)
            checked.append(partition_mismatch(table, "step", step))
            replace += f" AND step = '{step}'"  # an identifier, checked by only_partition
        # replaceWhere also takes a predicate on a clustering column: the replace stays one atomic commit.
        writer = df.write.format("delta").mode("overwrite").option("replaceWhere", replace)
        if not liquid:
            writer = writer.partitionBy(*spec.partition_by)
    else:
        writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    try:
        writer.saveAsTable(location) if is_catalog_name(location) else writer.save(location)
    except Exception as error:
        for mismatch in checked:
            if mismatch in str(error):
                raise ContractError(mismatch) from error
        raise
    return location
