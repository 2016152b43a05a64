"""Evaluation: metrics of the ranked tables in Spark, and the report."""

from llmrank_spark.evaluation.evaluate import (
    MODEL,
    RETRIEVAL,
    catalogue_frame,
    evaluate_tables,
    item_counts_until,
    one_request_column,
    sweep_step,
    user_labels,
)
from llmrank_spark.evaluation.report import sweep_points, value, write_report

__all__ = [
    "MODEL",
    "RETRIEVAL",
    "catalogue_frame",
    "evaluate_tables",
    "item_counts_until",
    "one_request_column",
    "sweep_points",
    "sweep_step",
    "user_labels",
    "value",
    "write_report",
]
