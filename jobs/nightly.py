"""spark-submit entry point for `llmrank nightly` (options: --config FILE, --set KEY=VALUE)."""

import sys

from llmrank_spark.pipeline import main

if __name__ == "__main__":
    sys.exit(main(["nightly", *sys.argv[1:]]))
