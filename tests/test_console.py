"""What a person watching a run sees: step lines and progress on stdout, everything else in the log."""

from __future__ import annotations

import os
import sys
import time

from llmrank_spark.pipeline.cli import stderr_to
from llmrank_spark.pipeline.progress import (
    PROGRESS_SECONDS,
    Progress,
    Work,
    duration,
    next_delay,
    progress_line,
)


def test_progress_line_estimates_items_rate_and_eta_from_the_task_share():
    work = Work(total=32_000, unit="pairs", started=100.0)
    line = progress_line("rerank", elapsed=150.0, done=2, tasks=8, work=work, now=200.0)
    # 2 of 8 tasks: ~8,000 pairs in 100 s = 80 pairs/s; 24,000 left = 300 s.
    assert line == "  [rerank] 2m30s: 2/8 tasks, ~8,000/32,000 pairs, 80 pairs/s, ETA 5m00s"


def test_progress_line_without_a_known_size_or_before_any_task_is_done():
    assert progress_line("candidates", 12.0, 0, 4, None, 12.0) == "  [candidates] 12s: 0/4 tasks"
    started = Work(total=100, unit="pairs", started=0.0)
    assert progress_line("rerank", 5.0, 0, 4, started, 5.0) == "  [rerank] 5s: 0/4 tasks, ~0/100 pairs"


def test_duration_is_short():
    assert [duration(s) for s in (0, 59.4, 61, 3599, 3725)] == ["0s", "59s", "1m01s", "59m59s", "1h02m"]


def test_progress_reports_a_running_stage_while_spark_works(spark):
    lines: list[str] = []
    progress = Progress(spark, "rerank", every=0.2, report=lines.append)

    def slow(rows):
        time.sleep(1.0)
        yield from rows

    progress.start()
    try:
        with progress.sized(400, "pairs"):
            spark.sparkContext.parallelize(range(400), 4).mapPartitions(slow).count()
    finally:
        progress.stop()
    assert lines, "no progress line while a 1 s stage ran"
    assert all(line.startswith("  [rerank] ") and "/4 tasks" in line for line in lines)
    assert any("/400 pairs" in line for line in lines)


def test_stderr_to_sends_what_is_written_to_the_descriptor_to_the_log(tmp_path, monkeypatch):
    console_path, log_path = tmp_path / "console", tmp_path / "run.log"
    with console_path.open("w") as console:
        monkeypatch.setattr(sys, "stderr", console)
        with stderr_to(log_path):
            # As the JVM does: straight to the file descriptor, not through Python's sys.stderr.
            os.write(console.fileno(), b"Ivy resolution report\n")
        os.write(console.fileno(), b"llmrank rerank: the failure message\n")
    assert log_path.read_text() == "Ivy resolution report\n"
    assert console_path.read_text() == "llmrank rerank: the failure message\n"


def test_progress_lines_come_ever_more_sparsely():
    delays = [PROGRESS_SECONDS]
    while len(delays) < 8:
        delays.append(next_delay(delays[-1]))
    assert delays == [30.0, 60.0, 120.0, 240.0, 480.0, 600.0, 600.0, 600.0]
