"""spark-submit entry point for `llmrank ingest movielens PATH` (options: --config FILE, --set KEY=VALUE)."""

import sys

from llmrank_spark.pipeline import main

if __name__ == "__main__":
    sys.exit(main(["ingest", "movielens", *sys.argv[1:]]))
