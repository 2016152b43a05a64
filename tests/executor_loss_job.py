"""A checkpointed frame read after the one executor that computed it was killed, in a Spark of its own.

Started with the test session by tests/conftest.py (`executor_loss_job`) as `python
tests/executor_loss_job.py DIR`, and checked by tests/test_checkpoints.py: the suite's shared session is
`local[2]`, one JVM that cannot lose an executor, so this needs a `local-cluster` master (executors in JVMs
of their own, as on a cluster) in its own process. Prints what happened as JSON on its last line.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from pyspark.sql import functions as F

from llmrank_spark.config import load_config
from llmrank_spark.lakehouse import checkpointed, get_spark
from llmrank_spark.lakehouse.checkpoints import CHECKPOINT_DIR

ROWS = 100_000


def executor_pids(app_id: str) -> list[int]:
    """The process ids of this application's executor JVMs (Linux: read from /proc)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        executor = b"org.apache.spark.executor.CoarseGrainedExecutorBackend" in arguments
        if executor and app_id.encode() in arguments:
            pids.append(int(cmdline.parent.name))
    return pids


def main() -> None:
    config = load_config(
        overrides=[
            "spark.master=local-cluster[1,1,1024]",
            "spark.conf={spark.executor.memory: '1g', spark.default.parallelism: '4'}",
        ]
    )
    spark = get_spark(config)
    squares = spark.range(ROWS, numPartitions=4).withColumn("square", F.col("id") * F.col("id"))
    kept = checkpointed(squares)
    killed = executor_pids(spark.sparkContext.applicationId)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    started = time.perf_counter()
    total = kept.agg(F.sum("square")).first()[0]
    result = {
        "killed": len(killed),
        "sum": total,
        "expected": sum(n * n for n in range(ROWS)),
        "checkpoint_dir": spark.conf.get(CHECKPOINT_DIR, None),
        "seconds_after_kill": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    spark.stop()


if __name__ == "__main__":
    main()
