"""One string per request key (request_type, request_id), for the functions that group by request_id alone."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from llmrank_spark.lakehouse import REQUEST_KEY

# The ASCII unit separator: never part of a request type, so "type<US>id" is one string per request key.
_KEY_SEPARATOR = "\x1f"


def request_key(request_type: Column, request_id: Column) -> Column:
    """One string per full request key (request_type, request_id)."""
    return F.concat_ws(_KEY_SEPARATOR, request_type, request_id)


def one_request_column(frame: DataFrame) -> DataFrame:
    """`frame` with request_id replaced by its `request_key`: the pure per-request functions (metrics,
    fairness) group by request_id alone, and a user and a query of the same id must stay two requests."""
    return frame.withColumn("request_id", request_key(*(F.col(c) for c in REQUEST_KEY)))
