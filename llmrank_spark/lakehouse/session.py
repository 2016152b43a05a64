"""The one place a SparkSession is made.

Locally it is ``local[*]`` with the Delta Lake extensions and the Delta jars resolved from Maven
Central by Spark's own ``spark.jars.packages`` (Ivy caches them under ~/.ivy2.5.2, so only the first
start downloads). On Databricks, or anywhere a session is already active, that session is reused
and no jars are set: the platform provides Delta.
"""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from llmrank_spark.config import Config

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"

# Settings every local run wants; anything in config.spark.conf wins over these.
LOCAL_DEFAULTS = {
    "spark.sql.shuffle.partitions": "8",
    # Delta rebuilds a table's snapshot with this many tasks (default 50): far too many for local tables.
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.default.parallelism": "4",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "4096",
    # One Python worker per task slot, kept alive across tasks so a loaded model is reused.
    "spark.python.worker.reuse": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "4g",
    "spark.databricks.delta.schema.autoMerge.enabled": "false",
    # Outputs are read incrementally downstream; new Delta tables get the change data feed.
    "spark.databricks.delta.properties.defaults.enableChangeDataFeed": "true",
}


def get_spark(config: Config) -> SparkSession:
    """Return the active session if there is one (Databricks, notebooks, tests), else build one."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # Executors must run the same interpreter as the driver (the project's environment).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    settings = {
        "spark.master": config.spark.master,
        "spark.app.name": config.spark.app_name,
        **LOCAL_DEFAULTS,
        **config.spark.conf,
    }
    resolve_delta_jars = config.spark.delta_jars == "maven"
    if resolve_delta_jars:
        settings |= {
            "spark.sql.extensions": DELTA_EXTENSION,
            "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        }
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        # Started by spark-submit: its --master, --conf and --packages (visible in a fresh SparkConf) win
        # over the config's, so one config file serves local, YARN and Kubernetes submissions.
        from pyspark import SparkConf

        submitted = SparkConf()
        settings = {key: value for key, value in settings.items() if not submitted.contains(key)}
        resolve_delta_jars = False
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    if resolve_delta_jars:
        # delta-spark's helper adds the io.delta Maven coordinates matching the installed version.
        from delta import configure_spark_with_delta_pip

        builder = configure_spark_with_delta_pip(builder)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
