"""The nightly pipeline: steps, the run log, preflight checks, the CLI and notebook helpers."""

from llmrank_spark.pipeline.cli import main
from llmrank_spark.pipeline.notebook import notebook_config, widget_values
from llmrank_spark.pipeline.run_log import StepRun
from llmrank_spark.pipeline.steps import NIGHTLY_STEPS

__all__ = [
    "NIGHTLY_STEPS",
    "StepRun",
    "main",
    "notebook_config",
    "widget_values",
]
