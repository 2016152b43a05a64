"""What a person watching a run sees: a line when a step starts and ends, and a progress line while
Spark works on a long stage (scoring), with items done, rate and ETA when the step knows its size."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyspark import StatusTracker
from pyspark.sql import SparkSession

from llmrank_spark.lakehouse import is_connect

PROGRESS_SECONDS = 30.0
# Lines come ever more sparsely (30 s, then 60 s, 2 min, ...) so a long step stays a few lines on the
# console; a sized block (scoring) starts over at PROGRESS_SECONDS, since its ETA is what people watch.
PROGRESS_MAX_SECONDS = 600.0


def say(line: str) -> None:
    """One line for the person watching the run, on standard output, at once (not when a buffer fills)."""
    print(line, flush=True)


def duration(seconds: float) -> str:
    """4s, 3m05s, 1h02m: short enough for a progress line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def next_delay(delay: float) -> float:
    """The wait before the next progress line: twice the last, at most PROGRESS_MAX_SECONDS."""
    return min(2 * delay, PROGRESS_MAX_SECONDS)


@dataclass(frozen=True)
class Work:
    """The size of the work a stage does (e.g. 32,000 pairs to score) and when it started."""

    total: int
    unit: str
    started: float


def progress_line(step: str, elapsed: float, done: int, tasks: int, work: Work | None, now: float) -> str:
    """`  [rerank] 2m30s: 3/8 tasks, ~12,000/32,000 pairs, 85 pairs/s, ETA 3m20s`.

    Items done are estimated from the share of the stage's tasks done: Spark reports tasks, not rows,
    and the scoring stage's partitions hold about equal shares of the pairs.
    """
    line = f"  [{step}] {duration(elapsed)}: {done}/{tasks} tasks"
    if work is None or tasks == 0:
        return line
    items = work.total * done / tasks
    line += f", ~{items:,.0f}/{work.total:,} {work.unit}"
    spent = now - work.started
    if items > 0 and spent > 0:
        rate = items / spent
        line += f", {rate:,.0f} {work.unit}/s, ETA {duration((work.total - items) / rate)}"
    return line


class Progress:
    """A background thread printing `progress_line` while a Spark stage runs: after `every` seconds, then
    at doubling intervals up to PROGRESS_MAX_SECONDS.

        It reads the classic session's status tracker; where there is none (Spark Connect) it stays silent.
    """

    def __init__(
        self,
        spark: SparkSession,
        step: str,
        every: float = PROGRESS_SECONDS,
        report: Callable[[str], None] = say,
    ) -> None:
        self.step, self.every, self.report = step, every, report
        self._tracker: StatusTracker | None
        # Classic only: Spark Connect has no SparkContext, so no task counts to report.
        self._tracker = None if is_connect(spark) else spark.sparkContext.statusTracker()
        self._stop = threading.Event()
        self._restart = threading.Event()
        self._thread: threading.Thread | None = None
        self._work: Work | None = None
        self._started = time.monotonic()

    def start(self) -> None:
        if self._tracker is not None:
            self._thread = threading.Thread(target=self._run, name=f"progress-{self.step}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @contextmanager
    def sized(self, total: int, unit: str) -> Iterator[None]:
        """Within the block, progress lines estimate `unit`s done out of `total` from the running stage."""
        self._work = Work(total, unit, time.monotonic())
        self._restart.set()
        try:
            yield
        finally:
            self._work = None

    def line(self) -> str | None:
        """The progress of the running stage with the most tasks, or None when no stage runs."""
        assert self._tracker is not None
        stages = [self._tracker.getStageInfo(stage) for stage in self._tracker.getActiveStageIds()]
        running = [stage for stage in stages if stage is not None]
        if not running:
            return None
        stage = max(running, key=lambda info: info.numTasks)
        now = time.monotonic()
        return progress_line(
            self.step, now - self._started, stage.numCompletedTasks, stage.numTasks, self._work, now
        )

    def _run(self) -> None:
        delay = self.every
        due = time.monotonic() + delay
        while not self._stop.wait(min(1.0, self.every / 2)):
            if self._restart.is_set():
                self._restart.clear()
                delay, due = self.every, time.monotonic() + self.every
            if time.monotonic() < due:
                continue
            line = self.line()
            if line is None:  # between stages: report the next one as soon as it runs
                continue
            self.report(line)
            delay = next_delay(delay)
            due = time.monotonic() + delay
