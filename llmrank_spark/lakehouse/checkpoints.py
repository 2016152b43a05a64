"""Checkpoints: an intermediate result computed once and kept where a lost executor cannot take it.

Steps cut long plans (a frame read by several branches, an ALS model's factors) by computing them once.
A local checkpoint keeps those blocks on the executors that computed them, and Spark cannot recompute
one: when an executor is lost, the step fails (`Checkpoint block ... not found`, measured on the
50,000-user nightly of bench/scale.py). A reliable checkpoint writes them under `spark.checkpoint.dir`,
on storage every executor reads, and works the same on Spark Connect.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile

from pyspark.sql import DataFrame, SparkSession

from llmrank_spark.config import Config

CHECKPOINT_DIR = "spark.checkpoint.dir"


# A step's warning (in `runs` and its summary) when its session has no checkpoint directory.
LOCAL_CHECKPOINTS = (
    f"{CHECKPOINT_DIR} is not set: intermediate results are kept on the executors that computed them, and "
    "the step fails if one of them is lost. Set it to a directory every executor reads (HDFS, DBFS, S3, "
    "ABFS) in the cluster's Spark config or as spark.checkpoint_dir in the llmrank config."
)


def has_checkpoint_dir(spark: SparkSession) -> bool:
    return bool(spark.conf.get(CHECKPOINT_DIR, None))


def checkpointed(frame: DataFrame) -> DataFrame:
    """`frame` computed now, once, and read back from the session's checkpoint directory.

    A session without one (a cluster whose Spark config does not set `spark.checkpoint.dir`) gets a local
    checkpoint: the step still runs, but does not survive a lost executor, and says so
    (`LOCAL_CHECKPOINTS`, from `StepRun`).
    """
    if has_checkpoint_dir(frame.sparkSession):
        return frame.checkpoint(eager=True)
    return frame.localCheckpoint(eager=True)


def checkpoint_settings(config: Config, master: str) -> dict[str, str]:
    """The checkpoint settings of a session this job starts on `master`.

    The configured directory if any; for a local master (local, local-cluster), whose executors share this
    machine's disk, a scratch directory removed when this process exits; otherwise none (the cluster's
    own setting, if it has one, applies). Spark removes a checkpoint's files once no frame refers to it.
    """
    location = config.spark.checkpoint_dir
    if location is None and master.startswith("local"):
        location = tempfile.mkdtemp(prefix="llmrank-checkpoints-")
        atexit.register(shutil.rmtree, location, ignore_errors=True)
    if location is None:
        return {}
    return {CHECKPOINT_DIR: location, "spark.cleaner.referenceTracking.cleanCheckpoints": "true"}
