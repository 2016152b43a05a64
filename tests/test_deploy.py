"""The deployment files stay consistent with the code they launch."""

import itertools
import json
from pathlib import Path

import pytest

from llmrank_spark.config import load_config
from llmrank_spark.pipeline import NIGHTLY_STEPS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("job_file", ["databricks_job.json", "databricks_job_serverless.json"])
def test_databricks_job_runs_every_nightly_step_in_order_with_retries(job_file):
    job = json.loads((ROOT / "conf" / job_file).read_text())
    tasks = job["tasks"]
    assert [t["task_key"] for t in tasks] == list(NIGHTLY_STEPS)
    for previous, task in itertools.pairwise(tasks):
        assert {"task_key": previous["task_key"]} in task["depends_on"]
    # Classic job clusters, or serverless environments (Spark Connect) that install the same wheel.
    compute = {c["job_cluster_key"] for c in job.get("job_clusters", [])}
    environments = {e["environment_key"]: e["spec"] for e in job.get("environments", [])}
    for task in tasks:
        python_task = task["spark_python_task"]
        assert (ROOT / python_task["python_file"]).is_file()
        config_file = python_task["parameters"][python_task["parameters"].index("--config") + 1]
        load_config(ROOT / config_file)
        assert task["max_retries"] >= 1
        if "environment_key" in task:
            assert any(d.endswith(".whl") for d in environments[task["environment_key"]]["dependencies"])
        else:
            assert task["job_cluster_key"] in compute
    assert job["max_concurrent_runs"] == 1, "two nightly runs must not race on the same partitions"


def test_every_nightly_step_has_a_spark_submit_entry_point_and_a_notebook():
    notebooks = {p.stem.split("_", 1)[1] for p in (ROOT / "notebooks").glob("[0-9]*_*.py")}
    for step in NIGHTLY_STEPS:
        entry = ROOT / "jobs" / f"{step}.py"
        assert f'main(["{step}"' in entry.read_text(), f"{entry} must call `llmrank {step}`"
        assert step in notebooks
    for notebook in (ROOT / "notebooks").glob("*.py"):
        assert notebook.read_text().startswith("# Databricks notebook source\n"), notebook
