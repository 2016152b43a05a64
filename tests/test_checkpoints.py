"""Checkpoints are reliable: written under the session's checkpoint directory, read back after the
executors that computed them are gone; local ones only where no directory is set, with a warning."""

import json
from pathlib import Path
from types import SimpleNamespace

from pyspark.sql import functions as F

from llmrank_spark.config import load_config
from llmrank_spark.lakehouse import LOCAL_CHECKPOINTS, checkpointed
from llmrank_spark.lakehouse.checkpoints import CHECKPOINT_DIR, checkpoint_settings
from llmrank_spark.pipeline import run_log
from llmrank_spark.pipeline.run_log import StepRun


def test_a_checkpoint_is_read_back_after_the_executor_that_computed_it_was_killed(executor_loss_job):
    """The job (tests/executor_loss_job.py) was started with the session by conftest's fixture. With a
    local checkpoint the same job fails: `Checkpoint block rdd_3_0 not found`."""
    process, directory = executor_loss_job
    returncode = process.wait(timeout=600)
    stderr = (directory / "stderr.txt").read_text()
    assert returncode == 0, stderr[-3000:]
    result = json.loads((directory / "stdout.txt").read_text().strip().splitlines()[-1])
    assert result["killed"] == 1, "the fault never fired: the job found no executor to kill"
    assert "Lost executor" in stderr, "Spark did not see the executor die"
    assert result["sum"] == result["expected"]
    # A local-cluster session this job starts gets a scratch checkpoint directory.
    assert result["checkpoint_dir"] and "llmrank-checkpoints-" in result["checkpoint_dir"]


def test_the_suites_session_checkpoints_to_files_and_reads_the_same_rows(spark):
    location = spark.conf.get(CHECKPOINT_DIR)
    frame = spark.range(50).withColumn("double", F.col("id") * 2)
    before = set(Path(location).rglob("part-*"))
    kept = checkpointed(frame)
    assert set(Path(location).rglob("part-*")) - before, f"nothing written under {location}"
    assert sorted(kept.collect()) == sorted(frame.collect())


def test_a_configured_directory_wins_and_only_local_masters_get_a_scratch_one():
    configured = load_config(overrides=["spark.checkpoint_dir=hdfs:///llmrank/checkpoints"])
    assert checkpoint_settings(configured, "yarn")[CHECKPOINT_DIR] == "hdfs:///llmrank/checkpoints"
    defaults = load_config()
    scratch = checkpoint_settings(defaults, "local-cluster[2,1,1024]")
    assert Path(scratch[CHECKPOINT_DIR]).is_dir()
    assert scratch["spark.cleaner.referenceTracking.cleanCheckpoints"] == "true"
    # A cluster's executors do not share this machine's disk: its own setting applies, or none.
    assert checkpoint_settings(defaults, "yarn") == {}
    assert checkpoint_settings(defaults, "k8s://https://cluster:443") == {}


def test_without_a_directory_checkpoints_stay_local_and_every_step_says_so(spark, config, monkeypatch):
    """A session with no checkpoint directory (a Databricks cluster whose Spark config sets none)."""
    no_directory = SimpleNamespace(conf=SimpleNamespace(get=lambda key, default=None: default))
    frame = SimpleNamespace(sparkSession=no_directory, localCheckpoint=lambda eager: ("kept locally", eager))
    assert checkpointed(frame) == ("kept locally", True)
    monkeypatch.setattr(run_log, "has_checkpoint_dir", lambda session: False)
    with StepRun(spark, config, "candidates") as run:
        pass
    assert run.warnings == [LOCAL_CHECKPOINTS]
    assert "spark.checkpoint_dir" in run.summary()
    # The suite's own session has one: its steps do not warn.
    monkeypatch.undo()
    with StepRun(spark, config, "candidates") as run:
        pass
    assert run.warnings == []
