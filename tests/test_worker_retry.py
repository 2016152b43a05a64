"""A Python worker killed mid-task is retried by Spark, and the output equals a clean run's."""

import json
import os
import subprocess
import sys
from pathlib import Path

JOB = Path(__file__).with_name("worker_kill_job.py")


def test_killed_python_worker_is_retried_and_the_output_is_identical(tmp_path):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(JOB.parents[1]), str(JOB.parent)])}
    done = subprocess.run(
        [sys.executable, str(JOB), str(tmp_path)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["killed"], "the fault never fired: no worker was killed"
    assert "Python worker exited unexpectedly" in done.stderr, "Spark did not see the worker crash"
    assert result["clean"] and result["retried"] == result["clean"]
