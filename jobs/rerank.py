"""spark-submit entry point for `llmrank rerank` (options: --config FILE, --set KEY=VALUE)."""

import sys

from llmrank_spark.pipeline import main

if __name__ == "__main__":
    sys.exit(main(["rerank", *sys.argv[1:]]))
