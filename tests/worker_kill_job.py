"""The rerank step run clean, then with one Python worker killed mid-task, in a Spark of its own.

Started with the test session by tests/conftest.py (`worker_kill_job`) as `python tests/worker_kill_job.py
DIR`, and checked by tests/test_worker_retry.py: Spark retries failed tasks in
local mode only with a `local[N,F]` master, and the suite's shared session is `local[2]` (one attempt),
so this needs its own process and session. Prints both runs' `ranked` rows as JSON on its last line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pyspark.sql import functions as F
from test_ranking import CANDIDATES, EVENTS, ITEMS, RUN_DATE
from tiny_reranker import tiny_artifact

from llmrank_spark.config import load_config
from llmrank_spark.lakehouse import frame_from_pandas, get_spark, load, write_table
from llmrank_spark.pipeline import steps


def ranked_rows(spark, config) -> list[dict]:
    ranked = load(spark, config.table_path("ranked")).where(F.col("run_date") == F.lit(RUN_DATE))
    rows = ranked.drop("run_date").orderBy("request_id", "rank").toPandas()
    return rows.assign(sources=rows["sources"].map(list)).to_dict("records")


def main(directory: Path) -> None:
    config = load_config(
        overrides=[
            "spark.master=local[2,4]",  # 2 cores, up to 4 attempts per task
            "spark.conf={spark.sql.shuffle.partitions: '2', spark.default.parallelism: '2'}",
            f"lakehouse.root={directory / 'lakehouse'}",
            f"run.run_date={RUN_DATE}",
            "rerank.mode=cross_encoder",
            f"rerank.model_path={tiny_artifact()}",
            "rerank.micro_batch_size=4",
        ]
    )
    spark = get_spark(config)
    for table, frame in (("items", ITEMS), ("interactions", EVENTS)):
        write_table(frame_from_pandas(spark, frame, table), config, table)
    write_table(frame_from_pandas(spark, CANDIDATES, "candidates"), config, "candidates", RUN_DATE)

    steps.rerank(spark, config)
    clean = ranked_rows(spark, config)
    marker = directory / "worker-killed"
    config.faults.kill_worker_once_marker = str(marker)
    steps.rerank(spark, config)
    print(json.dumps({"clean": clean, "retried": ranked_rows(spark, config), "killed": marker.exists()}))
    spark.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
