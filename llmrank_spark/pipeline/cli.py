"""The `llmrank` console command. Each subcommand calls the same step function as `jobs/<step>.py`.

Configuration is parsed and validated before Spark starts, so a bad key fails in milliseconds. A failing
command prints one paragraph on stderr, naming what is wrong and the fix, and exits non-zero; the full
trace goes to a log file (under $LLMRANK_LOG_DIR, default <tmp>/llmrank-logs) whose path the message names.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from llmrank_spark.config import Config, ConfigError, load_config
from llmrank_spark.lakehouse import ContractError
from llmrank_spark.pipeline import steps
from llmrank_spark.pipeline.preflight import PreflightError
from llmrank_spark.pipeline.run_log import format_run_log, run_log
from llmrank_spark.rerank import ArtifactError

# Failures whose message says what is wrong and what to do: printed as they are. Any other exception is
# unexpected: its type and first line are printed, and in both cases the full trace is in the log file.
ANTICIPATED = (ConfigError, ContractError, PreflightError, ArtifactError, FileNotFoundError)
MESSAGE_LIMIT = 600  # characters of an unexpected error's first line (a JVM error can be pages long)


def _add_config_options(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "--config", default=default, help="YAML config (default: built-in, = conf/local.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=default if default is argparse.SUPPRESS else [],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set run.run_date=2026-11-20 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmrank", description=__doc__)
    _add_config_options(parser, None)
    # Options are accepted after the subcommand too (jobs/*.py pass them there); SUPPRESS keeps a
    # subcommand's absent option from overwriting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    _add_config_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "doctor", parents=[common], help="check Java, Spark, the Delta jars and the packaged model"
    )
    sub.add_parser("generate-sample", parents=[common], help="write the seeded sample lakehouse")
    ingest = sub.add_parser("ingest", parents=[common], help="load a public dataset as input tables")
    ingest.add_argument("dataset", choices=["movielens"])
    ingest.add_argument("path", help="directory holding u.data, u.item, u.user (MovieLens 100K)")
    for name, step in steps.NIGHTLY_STEPS.items():
        sub.add_parser(name, parents=[common], help=(step.__doc__ or "").strip().splitlines()[0])
    sub.add_parser("train", parents=[common], help=(steps.train.__doc__ or "").strip().splitlines()[0])
    sub.add_parser("nightly", parents=[common], help="run every nightly step in order")
    sub.add_parser("demo", parents=[common], help="generate the sample lakehouse, run nightly, summarise")
    sub.add_parser(
        "runs", parents=[common], help="the run log of run.run_date: what each step read and wrote"
    )
    return parser


def doctor(config: Config) -> None:
    """Start Spark with Delta, round-trip a tiny Delta table, and embed a sentence with the packaged model."""
    from importlib.metadata import version

    from llmrank_spark.lakehouse import get_spark, is_connect
    from llmrank_spark.rerank import base_model_dir, load_sentence_encoder

    packages = ["pyspark", "delta-spark", "torch", "transformers", "sentence-transformers", "pandas"]
    print(f"python {sys.version.split()[0]}; " + ", ".join(f"{p} {version(p)}" for p in packages))
    spark = get_spark(config)
    with tempfile.TemporaryDirectory() as scratch:
        spark.range(3).write.format("delta").save(f"{scratch}/probe")
        rows = spark.read.format("delta").load(f"{scratch}/probe").count()
    session = "a Spark Connect session" if is_connect(spark) else "a classic session"
    print(f"Spark {spark.version} with Delta Lake, {session}: wrote and read a Delta table ({rows} rows)")
    vector = load_sentence_encoder("cpu").encode(["waterproof leather hiking boots"])
    print(f"all-MiniLM-L6-v2 from {base_model_dir()}: embedding of width {vector.shape[1]}")
    print("doctor: OK")


def run(args: argparse.Namespace, config: Config) -> None:
    if args.command == "doctor":
        doctor(config)
        return
    from llmrank_spark.lakehouse import get_spark

    spark = get_spark(config)
    if args.command == "runs":
        print(f"runs of {config.run.run_date} in {config.table_path('runs')}")
        print(format_run_log(run_log(spark, config)))
        return
    if args.command == "generate-sample":
        steps.generate_sample(spark, config)
    elif args.command == "ingest":
        steps.ingest_movielens(spark, config, Path(args.path))
    elif args.command == "train":
        steps.train(spark, config)
    elif args.command == "nightly":
        steps.nightly(spark, config)
    elif args.command == "demo":
        steps.generate_sample(spark, config)
        steps.nightly(spark, config)
    else:
        steps.NIGHTLY_STEPS[args.command](spark, config)


def log_file(command: str) -> Path:
    """This command's log file: warnings of the run and the full trace of a failure."""
    directory = Path(os.environ.get("LLMRANK_LOG_DIR") or Path(tempfile.gettempdir()) / "llmrank-logs")
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{command}-{dt.datetime.now():%Y%m%dT%H%M%S}-{os.getpid()}.log"


@contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """While the block runs, whatever is written to standard error goes to `path`: the JVM's and Ivy's
    output, Spark's warnings, Python workers' and libraries' warnings. Standard output keeps the step
    lines. Processes started inside the block (the JVM, its Python workers) inherit the redirection.

    Done on the file descriptor, because the JVM writes to it directly; a stderr that has none (pytest's
    capture, a notebook) is left as it is.
    """
    try:
        descriptor = sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        yield
        return
    sys.stderr.flush()
    console = os.dup(descriptor)
    with path.open("a", encoding="utf-8") as log:
        os.dup2(log.fileno(), descriptor)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(console, descriptor)
            os.close(console)


def failure_message(error: BaseException) -> str:
    """One paragraph: an anticipated error's message and notes; an unexpected one's type and first line."""
    if isinstance(error, ANTICIPATED):
        text = " ".join([str(error), *getattr(error, "__notes__", [])])
    else:
        lines = str(error).strip().splitlines() or [""]
        text = f"unexpected {type(error).__name__}: {lines[0][:MESSAGE_LIMIT]}"
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"llmrank: {error}", file=sys.stderr)
        return 2
    path = log_file(args.command)
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("llmrank_spark")
    logger.addHandler(handler)
    started = time.perf_counter()
    try:
        with stderr_to(path):
            run(args, config)
    except Exception as error:
        logger.error("llmrank %s failed", args.command, exc_info=error)
        print(f"llmrank {args.command}: {failure_message(error)} (full trace: {path})", file=sys.stderr)
        return 1
    finally:
        logger.removeHandler(handler)
        handler.close()
    log = f"log (Spark, Ivy and library messages): {path}" if path.exists() else ""
    if args.command not in ("doctor", "runs"):
        where = Path(config.lakehouse.root).resolve()
        finished = f"{args.command} finished in {time.perf_counter() - started:.0f}s for run_date "
        log = f"{finished}{config.run.run_date}; tables under {where}; {log}".rstrip("; ")
    if log:
        print(log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
