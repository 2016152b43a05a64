"""Shared fixtures: one SparkSession for the whole suite, and a config pointing at a temporary lakehouse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llmrank_spark.config import Config, load_config

ML100K_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


@pytest.fixture(scope="session")
def spark():
    from llmrank_spark.lakehouse import get_spark

    config = load_config(
        overrides=[
            "spark.master=local[2]",
            "spark.conf={spark.sql.shuffle.partitions: '4', spark.default.parallelism: '2'}",
        ]
    )
    session = get_spark(config)
    yield session
    session.stop()


@pytest.fixture
def config(tmp_path) -> Config:
    """Defaults with the lakehouse in a fresh temporary directory and a fixed run date."""
    return load_config(overrides=[f"lakehouse.root={tmp_path / 'lakehouse'}", "run.run_date=2026-11-20"])


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    if not (ML100K_DIR / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found at {ML100K_DIR} (it lives in ../shared, never in the repo)")
    return ML100K_DIR


def _job_beside_the_suite(request, tmp_path_factory, job: str, test_file: str):
    """`python tests/<job> DIR`, started with the session when <test_file> is collected: it runs in a Spark
    of its own (a JVM that mostly waits on its own start and small jobs) beside the suite, and its test
    waits for it. Yields (process, DIR), DIR holding its stdout.txt and stderr.txt, or None."""
    if not any(item.path.name == test_file for item in request.session.items):
        yield None
        return
    script = Path(__file__).with_name(job)
    directory = tmp_path_factory.mktemp(script.stem)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(script.parents[1]), str(script.parent)])}
    with open(directory / "stdout.txt", "w") as stdout, open(directory / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(script), str(directory)],
            env=environment,
            stdout=stdout,
            stderr=stderr,
        )
    yield process, directory
    process.kill()


@pytest.fixture(scope="session", autouse=True)
def worker_kill_job(request, tmp_path_factory):
    """tests/worker_kill_job.py: the rerank step with a Python worker killed (test_worker_retry.py)."""
    yield from _job_beside_the_suite(request, tmp_path_factory, "worker_kill_job.py", "test_worker_retry.py")


@pytest.fixture(scope="session", autouse=True)
def executor_loss_job(request, tmp_path_factory):
    """tests/executor_loss_job.py: a checkpoint read after its executors were killed (test_checkpoints.py)."""
    yield from _job_beside_the_suite(request, tmp_path_factory, "executor_loss_job.py", "test_checkpoints.py")
