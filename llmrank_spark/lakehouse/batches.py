"""Hash batches of whole requests, for the pandas calls that work list by list.

Spark's grouped pandas calls (`applyInPandas`) cost about as much per call as a short list's own work
(Arrow to pandas and back, pandas' per-call overhead: milliseconds), so a call per request would spend
most of a run there. The per-list functions take any number of whole lists, so each call gets a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column
from pyspark.sql import functions as F

from llmrank_spark.lakehouse.contracts import REQUEST_KEY

# Whole requests per pandas call: large enough that the call's cost is spread thin, small enough that a
# batch of top-K lists (or a shopper's choices) is a few MiB in pandas.
REQUESTS_PER_BATCH = 1000


def request_batch(
    requests: int, keys: Sequence[str] = REQUEST_KEY, per_batch: int = REQUESTS_PER_BATCH
) -> Column:
    """Each row's batch: its request key hashed into ceil(requests / per_batch) batches, so the rows of
    a request share a batch and a batch holds about `per_batch` requests."""
    batches = max(1, -(-requests // per_batch))
    return F.pmod(F.xxhash64(*keys), F.lit(batches))
