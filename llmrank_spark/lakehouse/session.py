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
from llmrank_spark.lakehouse.checkpoints import CHECKPOINT_DIR, checkpoint_settings

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
    # Broadcast a join side only once its size is measured (adaptive execution, after the shuffle that
    # made it), never on the planner's estimate: the estimate of an explode or a mapInPandas output is
    # its input's size, and a side estimated under 10 MiB that is really far larger ran the driver out of
    # heap building the broadcast (bench/scale.py, 10,000 users with a 1 GiB driver).
    "spark.sql.autoBroadcastJoinThreshold": "-1",
    "spark.sql.adaptive.autoBroadcastJoinThreshold": "10m",
    "spark.databricks.delta.schema.autoMerge.enabled": "false",
    # Outputs are read incrementally downstream; new Delta tables get the change data feed.
    "spark.databricks.delta.properties.defaults.enableChangeDataFeed": "true",
}


def is_connect(spark: SparkSession) -> bool:
    """Whether `spark` reaches Spark through Spark Connect: no SparkContext, no RDDs, no JVM gateway there."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def get_spark(config: Config) -> SparkSession:
    """Return the active session if there is one (Databricks, notebooks, tests), else build one.

    With `spark.remote` (or SPARK_REMOTE) set it is a Spark Connect session: to a running server at an
    sc:// URL, whose platform owns the jars and static settings (only `spark.conf` is applied, as session
    settings), or to a local Connect server this job starts with the same settings as a classic local run.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # Executors must run the same interpreter as the driver (the project's environment).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    remote = config.spark.remote or os.environ.get("SPARK_REMOTE")
    if remote and not remote.startswith("local"):
        spark = SparkSession.builder.remote(remote).getOrCreate()
        for key, value in config.spark.conf.items():
            spark.conf.set(key, value)
        return spark
    settings = {
        "spark.app.name": config.spark.app_name,
        **LOCAL_DEFAULTS,
        **config.spark.conf,
    }
    if not remote:
        settings["spark.master"] = config.spark.master
    resolve_delta_jars = config.spark.delta_jars == "maven"
    if resolve_delta_jars:
        settings |= {
            "spark.sql.extensions": DELTA_EXTENSION,
            "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        }
    master, checkpoints_set = remote or config.spark.master, CHECKPOINT_DIR in settings
    if "PYSPARK_GATEWAY_PORT" in os.environ and not remote:
        # Started by spark-submit: its --master, --conf and --packages (visible in a fresh SparkConf) win
        # over the config's, so one config file serves local, YARN and Kubernetes submissions.
        from pyspark import SparkConf

        submitted = SparkConf()
        settings = {key: value for key, value in settings.items() if not submitted.contains(key)}
        master = submitted.get("spark.master", "")
        checkpoints_set = checkpoints_set or submitted.contains(CHECKPOINT_DIR)
        resolve_delta_jars = False
    if not checkpoints_set:
        settings |= checkpoint_settings(config, master)
    builder = SparkSession.builder.remote(remote) if remote else SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    if resolve_delta_jars:
        # delta-spark's helper adds the io.delta Maven coordinates matching the installed version.
        from delta import configure_spark_with_delta_pip

        builder = configure_spark_with_delta_pip(builder)
    spark = builder.getOrCreate()
    if not is_connect(spark):
        # Classic only: under Spark Connect the server owns its log level.
        spark.sparkContext.setLogLevel("WARN")
    return spark
