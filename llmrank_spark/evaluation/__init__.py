"""Evaluation: metrics of the ranked tables in Spark, and the report."""

from llmrank_spark.evaluation.evaluate import (
    catalogue_frame,
    evaluate_tables,
    item_counts_until,
    measure_run,
    user_labels,
)
from llmrank_spark.evaluation.orders import (
    FAIR,
    MODEL,
    RETRIEVAL,
    hashed_requests,
    sampled_lists,
    sweep_step,
)
from llmrank_spark.evaluation.report import report_history, sweep_points, value, write_report
from llmrank_spark.evaluation.request_keys import one_request_column, request_key

__all__ = [
    "FAIR",
    "MODEL",
    "RETRIEVAL",
    "catalogue_frame",
    "evaluate_tables",
    "hashed_requests",
    "item_counts_until",
    "measure_run",
    "one_request_column",
    "report_history",
    "request_key",
    "sampled_lists",
    "sweep_points",
    "sweep_step",
    "user_labels",
    "value",
    "write_report",
]
