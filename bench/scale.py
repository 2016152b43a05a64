"""Scale: the whole nightly on a sample lakehouse of N users, with the driver held to a small JVM heap.

  python bench/scale.py --users 10000                      # 10,000 users x 100 candidates
  python bench/scale.py --users 200000                     # 20 million candidate rows

The sample generator writes a lakehouse scaled from the default sample: the same 50 events per user,
the catalogue fixed at --items, the 300 queries as they are, and the run date two weeks before the log
ends so the evaluate step has labels. A tiny seeded BERT cross-encoder (tests/tiny_reranker.py: 2
layers, hidden 32, the packaged tokenizer) is registered as the champion, so every step runs the
production code path while the network's own cost stays small. Then each nightly step runs as its own
`llmrank` process, as a scheduler runs them, on Spark's local-cluster master (two executors in their
own JVMs, as on a cluster) with spark.driver.memory at --driver-memory.

Measured per step: rows read (the Delta versions the run log says it read), rows written, seconds, the
peak driver JVM heap and the peak resident memory of the driver's Python process (getrusage in that
process; the executors' Python workers are not the driver). The heap figure is the largest occupancy
the JVM's GC log records right after a collection: what the step held, since G1 lets garbage fill any
heap to its limit before it collects. The last line is exactly:

  driver peak: heap H MiB, python P MiB, U users, R candidate rows, S s

with H and P the largest over the steps, R the rows of `candidates` and S the seconds of all steps.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NIGHTLY = ("candidates", "rerank", "attributes", "evaluate")
# Two workers of one core and 4 GiB each (executor heap: --executor-memory), in their own JVMs beside the
# driver: the 2-core machine as a small cluster (Spark's local-cluster master, which pip's pyspark runs).
LOCAL_CLUSTER = "local-cluster[2,1,4096]"
# Events per user of the default sample (60,000 events, 1,200 users); its 300 queries are kept as they are.
EVENTS_PER_USER = 50
# The sample's log ends the day before END_OF_LOG; a run 15 days before that has two weeks of labels after
# it, as in conf/demo.yaml.
LABEL_DAYS = 15
# A collection in G1's unified GC log (Java 17):
# "GC(3) Pause Young (Normal) (G1 Evacuation Pause) 412M->96M(1024M) 7.1ms", or Pause Full. Remark and
# Cleanup pauses log occupancy too, but collect no young or mixed regions.
GC_COLLECTION = re.compile(r"GC\(\d+\) Pause (?:Young|Full)\b.* (\d+)M->(\d+)M\((\d+)M\)")


@dataclass(frozen=True)
class StepFigures:
    step: str
    seconds: float
    heap_mib: int
    python_mib: int
    exit_code: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=10_000, help="shoppers in the sample lakehouse")
    parser.add_argument("--items", type=int, default=2_400, help="catalogue items (fixed across scales)")
    parser.add_argument("--candidates", type=int, default=100, help="candidates per request")
    parser.add_argument(
        "--master",
        default=LOCAL_CLUSTER,
        help="Spark master of every step: local-cluster[N,C,MiB] runs N executors of C cores in their own "
        "JVMs, as a cluster does, so the driver's heap holds only the driver; local[*] puts the executor "
        "in the driver's JVM",
    )
    parser.add_argument("--executor-memory", default="3g", help="spark.executor.memory (local-cluster only)")
    parser.add_argument("--driver-memory", default="1g", help="spark.driver.memory of every nightly step")
    parser.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting of every step"
    )
    parser.add_argument("--steps", default=",".join(NIGHTLY), help="nightly steps to run, in order")
    parser.add_argument("--root", type=Path, default=None, help="working directory (default: under /tmp)")
    parser.add_argument("--reuse", action="store_true", help="keep an existing sample lakehouse at --root")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one llmrank command, see below
    parser.add_argument("--peak-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_child(command: str, config: Path, peak_file: Path) -> int:
    """One llmrank command in this process, then its own peak resident memory (KiB on Linux) to a file.

    getrusage(RUSAGE_SELF) counts this process only, not the JVM it starts nor the executors' workers.
    """
    from llmrank_spark.pipeline.cli import main

    code = main([command, "--config", str(config)])
    peak_file.write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    return code


def write_config(
    root: Path,
    args: argparse.Namespace,
    name: str,
    driver_memory: str,
    master: str,
    gc_log: Path | None = None,
) -> Path:
    """The bench's config `<root>/<name>.yaml`: the defaults (conf/local.yaml) with the scaled sample, the
    run date with labels after it, the master, the driver's heap and, for a measured step, its GC log."""
    from llmrank_spark.data.sample_lakehouse import END_OF_LOG

    end = END_OF_LOG.date()
    conf = {"spark.driver.memory": driver_memory, "spark.executor.memory": args.executor_memory}
    conf |= dict(item.split("=", 1) for item in args.conf)
    if gc_log is not None:
        conf["spark.driver.extraJavaOptions"] = f"-Xlog:gc:file={gc_log}"
    tree = {
        "spark": {"master": master, "conf": conf},
        "lakehouse": {"root": str(root / "lakehouse")},
        "run": {"run_date": (end - dt.timedelta(days=LABEL_DAYS)).isoformat()},
        "sample": {
            "n_users": args.users,
            "n_items": args.items,
            "n_events": args.users * EVENTS_PER_USER,
        },
        "candidates": {"n_per_request": args.candidates},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def run_command(command: str, config: Path, root: Path) -> tuple[int, float, int]:
    """Run `llmrank <command>` in a child process: exit code, seconds, peak Python RSS in MiB."""
    peak_file = root / f"{command}.peak"
    started = time.perf_counter()
    child = [
        sys.executable,
        __file__,
        "--child",
        command,
        "--config",
        str(config),
        "--peak-file",
        str(peak_file),
    ]
    code = subprocess.call(child, cwd=REPO)
    seconds = time.perf_counter() - started
    python_mib = int(peak_file.read_text()) // 1024 if peak_file.exists() else 0
    return code, seconds, python_mib


def peak_heap_mib(gc_log: Path) -> int:
    """The largest heap occupancy right after a collection in the JVM's GC log (0 when it logged none).

    After, not before: G1 lets garbage fill the heap up to its limit before it collects, so the occupancy
    before a pause is the limit at any scale; what a collection could not free is what the step held.
    """
    if not gc_log.exists():
        return 0
    return max((int(m.group(2)) for m in GC_COLLECTION.finditer(gc_log.read_text())), default=0)


def register_tiny_champion(config_path: Path) -> str:
    """Build the tests' tiny seeded cross-encoder and register it as the champion in the bench's registry.

    Imported from tests/ so the bench and the tests share one definition of the tiny model.
    """
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_reranker import build_tiny_artifact, register_tiny_version

    from llmrank_spark.config import load_config

    config = load_config(config_path)
    artifact = build_tiny_artifact(config_path.parent / "tiny-scale-v1", version="tiny-scale-v1")
    register_tiny_version(config, artifact, status="promoted", promote=True)
    return "tiny-scale-v1"


def rows_table(config_path: Path, figures: list[StepFigures]) -> tuple[list[str], int]:
    """Per step: rows read and written, from the run log (Delta versions read, rows written)."""
    from llmrank_spark.config import load_config
    from llmrank_spark.lakehouse import get_spark, read_table
    from llmrank_spark.pipeline.run_log import run_log

    config = load_config(config_path)
    spark = get_spark(config)
    log = run_log(spark, config)
    lines = [
        f"{'step':<12} {'rows in':>12} {'rows out':>12} {'seconds':>8} {'heap MiB':>9} {'python MiB':>11}"
    ]
    for step in figures:
        runs = log[(log.step == step.step) & (log.status == "succeeded")]
        if runs.empty:
            lines.append(_row(step, "failed", ""))
            continue
        run = runs.iloc[-1]
        rows_in = sum(
            read_table(spark, config, table, version=version).count()
            for table, version in dict(run.inputs).items()
        )
        rows = dict(run.rows)
        lines.append(_row(step, f"{rows_in:,d}", f"{sum(rows.values()):,d}"))
    # From the run log, not the steps above: a run of later steps alone (--reuse) still names its scale.
    written = [dict(run.rows).get("candidates", 0) for run in log[log.status == "succeeded"].itertuples()]
    spark.stop()
    return lines, max(written, default=0)


def _row(step: StepFigures, rows_in: str, rows_out: str) -> str:
    figures = f"{step.seconds:8.0f} {step.heap_mib:9d} {step.python_mib:11d}"
    return f"{step.step:<12} {rows_in:>12} {rows_out:>12} {figures}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args.child, args.config, args.peak_file)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = (args.root or Path("/tmp") / f"llmrank-scale-{args.users}").resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LLMRANK_LOG_DIR", str(root / "logs"))
    if not (args.reuse and (root / "lakehouse").exists()):
        generate = write_config(root, args, "generate", "8g", "local[*]")
        print(f"generating the sample lakehouse of {args.users:,} users under {root}", flush=True)
        code, seconds, _ = run_command("generate-sample", generate, root)
        if code:
            print(f"generate-sample failed (exit {code}); see {root / 'logs'}")
            return code
        print(f"generated in {seconds:.0f}s", flush=True)
        print(f"registered {register_tiny_champion(generate)} as the champion", flush=True)
    figures: list[StepFigures] = []
    for step in args.steps.split(","):
        gc_log = root / f"gc-{step}.log"
        gc_log.unlink(missing_ok=True)
        config = write_config(root, args, step, args.driver_memory, args.master, gc_log)
        print(f"-- {step} (driver {args.driver_memory})", flush=True)
        code, seconds, python_mib = run_command(step, config, root)
        figures.append(StepFigures(step, seconds, peak_heap_mib(gc_log), python_mib, code))
        print(f"   {step}: exit {code}, {seconds:.0f}s, heap {figures[-1].heap_mib} MiB", flush=True)
        if code:
            break
    lines, candidate_rows = rows_table(write_config(root, args, "count-rows", "4g", "local[*]"), figures)
    print("\n".join(lines))
    heap = max(f.heap_mib for f in figures)
    python = max(f.python_mib for f in figures)
    total = sum(f.seconds for f in figures)
    scale = f"{args.users} users, {candidate_rows} candidate rows, {total:.0f} s"
    print(f"driver peak: heap {heap} MiB, python {python} MiB, {scale}")
    return max(f.exit_code for f in figures)


if __name__ == "__main__":
    sys.exit(main())
