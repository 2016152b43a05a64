"""A nightly step with every executor killed each time it writes a checkpoint: does the step survive?

    python bench/executor_loss.py                        # reliable checkpoints (what steps use)
    python bench/executor_loss.py --checkpoints local    # the same with Spark's local checkpoints

Generates the tests' small sample (60 shoppers, 300 items) in a lakehouse under --root, then runs the
candidates step in a cluster of two one-core executor JVMs (`local-cluster[2,1,1024]`) while a watcher
kills every executor of the application (SIGKILL) as soon as a new checkpoint appears under the
session's checkpoint directory; Spark's standalone worker starts new ones. `--checkpoints local`
replaces Spark's reliable checkpoint by its local one (blocks kept on the executors), and marks each in
the directory so the watcher fires at the same points. Prints, as its last line:
`candidates with executors killed at each checkpoint (MODE): exit E, K executors killed, L lists, S s`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from executor_loss_job import executor_pids  # noqa: E402 - the tests' definition, shared
from pyspark.sql import functions as F  # noqa: E402
from test_pipeline import RUN_DATE, SMALL_SAMPLE  # noqa: E402 - the tests' small sample, shared

from llmrank_spark.config import load_config  # noqa: E402
from llmrank_spark.lakehouse import get_spark, load  # noqa: E402
from llmrank_spark.lakehouse.checkpoints import CHECKPOINT_DIR  # noqa: E402
from llmrank_spark.pipeline import main as llmrank  # noqa: E402


def keep_checkpoints_locally() -> None:
    """Make every reliable checkpoint a local one, and leave a marker file where the reliable one would
    have written, so the watcher kills at the same points."""
    from pyspark.sql.classic.dataframe import DataFrame

    def local_checkpoint(frame: DataFrame, eager: bool = True) -> DataFrame:
        kept = frame.localCheckpoint(eager)
        marker = Path(frame.sparkSession.conf.get(CHECKPOINT_DIR)) / uuid.uuid4().hex / "part-00000"
        marker.parent.mkdir(parents=True)
        marker.touch()
        return kept

    DataFrame.checkpoint = local_checkpoint  # type: ignore[method-assign]


def kill_at_each_checkpoint(checkpoints: Path, app_id: str, done: threading.Event, killed: list[int]) -> None:
    """Until `done`: each time a new checkpoint has files, SIGKILL every executor of `app_id`."""
    seen: set[Path] = set()
    while not done.wait(0.05):
        written = {part.parent for part in checkpoints.rglob("part-*")}
        if written - seen and (pids := executor_pids(app_id)):
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed.extend(pids)
            seen = written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoints", choices=["reliable", "local"], default="reliable")
    parser.add_argument(
        "--root", type=Path, default=None, help="working directory (default: a new temporary one)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = args.root or Path(tempfile.mkdtemp(prefix="llmrank-executor-loss-"))
    if args.checkpoints == "local":
        keep_checkpoints_locally()
    overrides = [
        "spark.master=local-cluster[2,1,1024]",
        "spark.conf={spark.sql.shuffle.partitions: '4', spark.default.parallelism: '2', "
        "spark.executor.memory: '1g'}",
        f"lakehouse.root={root / 'lakehouse'}",
        *SMALL_SAMPLE,
    ]
    arguments = [argument for override in overrides for argument in ("--set", override)]
    config = load_config(overrides=overrides)
    spark = get_spark(config)
    if code := llmrank(["generate-sample", *arguments]):
        return code
    done, killed = threading.Event(), []
    watcher = threading.Thread(
        target=kill_at_each_checkpoint,
        args=(Path(spark.conf.get(CHECKPOINT_DIR)), spark.sparkContext.applicationId, done, killed),
    )
    watcher.start()
    started = time.perf_counter()
    code = llmrank(["candidates", *arguments])
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    lists = 0
    if code == 0:
        candidates = load(spark, config.table_path("candidates")).where(F.col("run_date") == F.lit(RUN_DATE))
        lists = candidates.select("request_type", "request_id").distinct().count()
    spark.stop()
    print(
        f"candidates with executors killed at each checkpoint ({args.checkpoints}): exit {code}, "
        f"{len(killed)} executors killed, {lists} lists, {seconds:.0f} s"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
