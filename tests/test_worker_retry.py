"""A Python worker killed mid-task is retried by Spark, and the output equals a clean run's."""

import json


def test_killed_python_worker_is_retried_and_the_output_is_identical(worker_kill_job):
    """The job (tests/worker_kill_job.py) was started with the session by conftest's fixture."""
    process, directory = worker_kill_job
    returncode = process.wait(timeout=600)
    stderr = (directory / "stderr.txt").read_text()
    assert returncode == 0, stderr[-3000:]
    result = json.loads((directory / "stdout.txt").read_text().strip().splitlines()[-1])
    assert result["killed"], "the fault never fired: no worker was killed"
    assert "Python worker exited unexpectedly" in stderr, "Spark did not see the worker crash"
    assert result["clean"] and result["retried"] == result["clean"]
