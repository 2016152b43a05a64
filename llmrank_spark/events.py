"""The behaviour log's time window: a run dated D sees every event before the end of day D, never after.

The one place the window is drawn, so candidates, features, training, the gate, evaluation and
preflight agree on which events a run may see.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

ITEM_EVENTS = "item_events"


def end_of_day(day: dt.date) -> dt.datetime:
    """Midnight after `day`: the first instant a run dated `day` must not see."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time())


def events_until(interactions: DataFrame, day: dt.date) -> DataFrame:
    """The events a run dated `day` may see: those strictly before the end of that day."""
    return interactions.where(F.col("event_ts") < F.lit(end_of_day(day)))


def item_event_counts(interactions: DataFrame, as_of: dt.date) -> DataFrame:
    """(item_id, item_events): each interacted item's events up to the end of `as_of`."""
    counts = events_until(interactions, as_of).groupBy("item_id").agg(F.count("*").cast("double"))
    return counts.toDF("item_id", ITEM_EVENTS)
