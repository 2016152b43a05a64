"""spark-submit entry point for `llmrank generate-sample` (options: --config FILE, --set KEY=VALUE)."""

import sys

from llmrank_spark.pipeline import main

if __name__ == "__main__":
    sys.exit(main(["generate-sample", *sys.argv[1:]]))
