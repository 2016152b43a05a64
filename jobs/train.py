"""spark-submit entry point for `llmrank train` (options: --config FILE, --set KEY=VALUE)."""

import sys

from llmrank_spark.pipeline import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
